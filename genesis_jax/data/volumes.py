"""Reading CT/MR volumes (NIfTI, DICOM series, MetaImage, NRRD) into one canonical form.

NIfTI goes through nibabel, everything else through SimpleITK (DICOM series through
GDCM, which sorts slices by position and applies rescale slope/intercept). Both end in
LPS orientation (identity direction) with the array in (X, Y, Z) order: the same voxel
grid whatever the file format or the scanner's storage order (tested). Values stay in the file's
units (HU for CT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from genesis_jax._optional import require
from genesis_jax.errors import UserError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")  # 2D images (data/images.py)


class VolumeError(UserError):
    """A bad input: str(error) is one line naming the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclasses.dataclass
class Volume:
    """array: float32 (X, Y, Z) in the file's units; spacing: mm per voxel along X, Y, Z;
    affine: float64 (4, 4) from the array's voxel index (x, y, z, 1) to LPS world mm,
    whatever the file format (None where unknown)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    affine: np.ndarray | None = None


def _sitk():
    return require("SimpleITK", "reading medical images", "pip install SimpleITK (a dependency of genesis-jax)")


def is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """DICOM by extension, or by the 'DICM' marker after the 128-byte preamble."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def split_paths(text) -> list[str]:
    """A config's comma-separated list of paths ("a.nii.gz,b.nii.gz"), empty items dropped."""
    return [p for p in str(text).split(",") if p]


def find_inputs(paths) -> list[Path]:
    """Files and directories -> the volumes to read, sorted.

    A directory is searched recursively: image files are volumes; a directory that
    holds DICOM files is one DICOM series volume. Other files in directories (the .raw
    of an .mhd, notes) are not inputs. A file named explicitly is always an input.
    A directory with no volume at all raises VolumeError.
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise VolumeError(path, "no such file or directory")
        if path.is_file():
            found.add(path)
            continue
        before = len(found)
        for directory in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
            files = sorted(p for p in directory.iterdir() if p.is_file())
            found.update(p for p in files if is_image_file(p))
            if any(is_dicom_file(p) for p in files if not is_image_file(p)):
                found.add(directory)
        if len(found) == before:
            raise VolumeError(path, "no image files or DICOM series found in this directory")
    return sorted(found)


# A header may promise any size; past this many voxels (8 GiB as float32, ~8x a large CT)
# it is refused before anything is allocated, rather than exhausting memory.
MAX_VOXELS = 2**31
# Slices of a DICOM series further apart than this fraction of their usual spacing mean a
# missing or damaged slice (ITK would only warn, and read the gap as if it were not there).
SLICE_SPACING_TOLERANCE = 0.01


def _check_size(path, shape) -> None:
    """VolumeError for a header size the volume cannot have (checked before reading voxels)."""
    size = "x".join(map(str, shape))
    if len(shape) != 3:
        raise VolumeError(path, f"{len(shape)}D image of size {size}; need a 3D volume")
    if min(shape) < 1:
        raise VolumeError(path, f"empty or invalid size {size} in the header")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise VolumeError(path, f"implausible size {size} in the header (over {MAX_VOXELS:,} voxels): a damaged "
                                f"header?")


@contextlib.contextmanager
def _itk_messages():
    """Collect what ITK, GDCM and MetaIO print on the process's stderr (C++ std::cerr, fd 2)
    while they read, so the user gets our one line instead, with the relevant part in it."""
    messages: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            messages.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines()
                            if line.strip())


def _unreadable(path, error: RuntimeError, messages: list[str]) -> VolumeError:
    # What the reader printed explains more ("data not read completely") than its exception
    # ("File cannot be read"), so it comes first.
    lines = messages + [line.strip() for line in str(error).strip().splitlines()]
    reason = next((line for line in lines if "rror" in line or "not" in line.lower()), "")
    return VolumeError(path, "not a readable image (corrupt, truncated or not an image file)"
                             f"{': ' + reason[:160] if reason else ''}")


def _read_itk_file(path: Path):
    """One image file through SimpleITK, its header checked before the voxels are read."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _itk_messages() as messages:
        try:
            reader.ReadImageInformation()
            _check_size(path, reader.GetSize())  # before Execute allocates what the header promises
            return reader.Execute()
        except RuntimeError as e:
            error = e
    raise _unreadable(path, error, messages)


def _read_dicom_series(directory: Path):
    """The one DICOM series of a directory; every DICOM file there must be one of its slices,
    and the slices must be evenly spaced (else a slice is missing or damaged)."""
    sitk = _sitk()
    with _itk_messages() as messages:
        try:
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
            if not series:
                raise VolumeError(directory, "no readable DICOM series in this directory")
            if len(series) > 1:
                raise VolumeError(directory, f"{len(series)} DICOM series mixed in one directory "
                                             f"({', '.join(series[:3])}{', ...' if len(series) > 3 else ''}); put "
                                             f"each series in its own directory")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), series[0])
            _check_every_file_is_a_slice(directory, files)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            image = reader.Execute()
        except RuntimeError as e:
            error = e
        else:
            _check_even_slices(directory, image, files, reader)
            return image
    raise _unreadable(directory, error, messages)


def _check_every_file_is_a_slice(directory: Path, files) -> None:
    """A damaged slice file is left out of the series by GDCM, silently: name it instead."""
    in_series = {Path(f).name for f in files}
    # Slices: DICOM by marker or extension, or a file without extension (a damaged marker);
    # DICOMDIR and files with other extensions (notes.txt, .json) are not slices.
    dicom = [p.name for p in sorted(directory.iterdir())
             if p.is_file() and p.name.upper() != "DICOMDIR" and not p.name.startswith(".")
             and (is_dicom_file(p) or not p.suffix)]
    outside = [name for name in dicom if name not in in_series]
    if outside:
        raise VolumeError(directory, f"{len(outside)} of its {len(dicom)} DICOM files are not readable slices of "
                                     f"the series ({', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''}): "
                                     f"damaged, or from another kind of object; remove them or repair the series")


def _check_even_slices(directory: Path, image, files, reader) -> None:
    positions = []
    for index in range(len(files)):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return  # no positions to check (ITK then spaces the slices by their thickness)
        try:
            positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
        except ValueError:
            raise VolumeError(directory, f"{Path(files[index]).name}: unreadable ImagePositionPatient "
                                         f"{reader.GetMetaData(index, '0020|0032')!r}") from None
    if len(positions) < 3:
        return
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    gaps = np.diff(np.asarray(positions) @ normal)
    usual = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - usual)))
    if usual <= 0 or abs(gaps[worst] - usual) > SLICE_SPACING_TOLERANCE * usual:
        raise VolumeError(directory, f"slices are not evenly spaced: {gaps[worst]:.3g} mm between "
                                     f"{Path(files[worst]).name} and {Path(files[worst + 1]).name}, {usual:.3g} mm "
                                     f"elsewhere (a missing or damaged slice?)")


@contextlib.contextmanager
def _nibabel_notes(path: Path):
    """What nibabel says while it reads a damaged header, named by the file: the repairs it
    logs ("sform_code 116 not valid; setting to 0") and the warnings NumPy raises in it
    ("overflow encountered in cast"), each once, as `warning: FILE: ...` lines."""
    from nibabel.imageglobals import logger

    said = []

    class Named(logging.Handler):
        def emit(self, record):
            said.append(f"{record.getMessage()} (nibabel's repair of a damaged header)")

    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [Named()], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        said.extend(f"{w.message} ({w.category.__name__} in nibabel, reading the header)" for w in caught)
        for line in dict.fromkeys(said):
            print(f"warning: {path}: {line}", file=sys.stderr)


def _read_nifti(path: Path):
    """(array (X, Y, Z) float32 in LPS order, spacing) through nibabel.

    Not through ITK: its NIfTI reader silently zero-fills a truncated file and turns
    NaN/Inf voxels into 0 (both seen with SimpleITK 2.5); nibabel reports the first and
    keeps the second, so both reach our checks.
    """
    import nibabel as nib
    try:
        with _nibabel_notes(path):
            image = nib.load(str(path))
            shape = tuple(int(d) for d in image.shape)
            singletons = len(shape) > 3 and all(d == 1 for d in shape[3:])  # (X, Y, Z, 1) is still a volume
            _check_size(path, shape[:3] if singletons else shape)
            if singletons:
                image = image.slicer[(slice(None),) * 3 + (0,) * (len(shape) - 3)]
            canonical = nib.as_closest_canonical(image)  # RAS
            array = np.asarray(canonical.dataobj, dtype=np.float32)[::-1, ::-1, :]  # -> LPS
            spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
            affine = _lps_affine(canonical.affine, array.shape)
    except VolumeError:
        raise
    except Exception as e:
        raise VolumeError(path, f"not a readable image (corrupt, truncated or not NIfTI: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return np.ascontiguousarray(array), spacing, affine


def _lps_affine(ras_affine: np.ndarray, shape) -> np.ndarray:
    """The index -> LPS mm affine of a RAS-canonical array read with x and y reversed."""
    reverse_xy = np.diag([-1.0, -1.0, 1.0, 1.0])
    reverse_xy[:2, 3] = [shape[0] - 1, shape[1] - 1]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ras_affine, np.float64) @ reverse_xy


def _itk_affine(image) -> np.ndarray:
    """The index -> LPS mm affine of an ITK image (ITK's world frame is LPS)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection(), np.float64).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return affine


def read_volume(path) -> Volume:
    """Read one volume (file or DICOM series directory) as float32 (X, Y, Z) + spacing.

    Raises VolumeError for anything that is not a finite 3D volume (2D pictures:
    data/images.py read_volume_or_image).
    """
    sitk = _sitk()
    path = Path(path)
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        array, spacing, affine = _read_nifti(path)
        return checked_volume(array, spacing, path, affine)
    image = _read_dicom_series(path) if path.is_dir() else _read_itk_file(path)
    _check_size(path, image.GetSize())
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel; need a scalar volume")
    image = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    return checked_volume(np.ascontiguousarray(array), tuple(float(s) for s in image.GetSpacing()), path, _itk_affine(image))


def checked_volume(array: np.ndarray, spacing, path, affine=None) -> Volume:
    """A Volume of the array, VolumeError for NaN/Inf voxels or an invalid spacing."""
    if not np.isfinite(array).all():
        raise VolumeError(path, f"{int((~np.isfinite(array)).sum())} NaN/Inf voxels")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeError(path, f"invalid voxel spacing {', '.join(f'{s:g}' for s in spacing)} mm in the header")
    return Volume(array, spacing, str(path), affine)


def resample(volume: Volume, spacing) -> Volume:
    """Linear resampling to `spacing` (mm, X Y Z), keeping the physical extent."""
    sitk = _sitk()
    spacing = tuple(float(s) for s in spacing)
    if np.allclose(spacing, volume.spacing):
        return volume
    image = sitk.GetImageFromArray(volume.array.transpose(2, 1, 0))
    image.SetSpacing(volume.spacing)
    size = [max(1, int(round(n * old / new))) for n, old, new in zip(volume.array.shape, volume.spacing, spacing)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, (0.0, 0.0, 0.0), spacing,
                        image.GetDirection(), float(volume.array.min()), sitk.sitkFloat32)
    affine = None
    if volume.affine is not None:  # the same origin and directions, the new spacing
        affine = volume.affine.copy()
        affine[:3, :3] = volume.affine[:3, :3] / np.asarray(volume.spacing) * np.asarray(spacing)
    return Volume(sitk.GetArrayFromImage(out).transpose(2, 1, 0).copy(), spacing, volume.source, affine)


def hu_window(array: np.ndarray, low: float = -1000.0, high: float = 1000.0) -> np.ndarray:
    """Clip to [low, high], scale to [0, 1] (the Genesis CT normalisation)."""
    return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)


def to_unit_range(array: np.ndarray, modality: str = "ct", window=(-1000.0, 1000.0)) -> tuple[np.ndarray, tuple]:
    """([0, 1] array, window used): CT through the HU window, MR and X-ray (uncalibrated)
    through their own 0.5-99.5 percentiles."""
    if modality in ("mr", "xray"):
        return percentile_window(array)
    low, high = window
    return hu_window(array, low, high), (float(low), float(high))


def percentile_window(array: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[np.ndarray, tuple]:
    """MR and other uncalibrated modalities: window between two percentiles."""
    low, high = np.percentile(array, [low_pct, high_pct])
    if high <= low:
        high = low + 1.0
    return hu_window(array, float(low), float(high)), (float(low), float(high))
