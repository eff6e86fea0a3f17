"""Reading CT/MR volumes (NIfTI, DICOM series, MetaImage, NRRD) into one canonical form.

NIfTI goes through nibabel, everything else through SimpleITK (DICOM series through
GDCM, which sorts slices by position and applies rescale slope/intercept). Both end in
LPS orientation (identity direction) with the array in (X, Y, Z) order: the same voxel
grid whatever the file format or the scanner's storage order (tested). Values stay in the file's
units (HU for CT).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from genesis_jax._optional import require
from genesis_jax.errors import UserError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


class VolumeError(UserError):
    """A bad input: str(error) is one line naming the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclasses.dataclass
class Volume:
    """array: float32 (X, Y, Z) in the file's units; spacing: mm per voxel along X, Y, Z."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    source: str


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


def _read_dicom_series(directory: Path):
    sitk = _sitk()
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    if not series:
        raise VolumeError(directory, "no readable DICOM series in this directory")
    if len(series) > 1:
        raise VolumeError(directory, f"{len(series)} DICOM series mixed in one directory ({', '.join(series[:3])}"
                                     f"{', ...' if len(series) > 3 else ''}); put each series in its own directory")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _read_nifti(path: Path):
    """(array (X, Y, Z) float32 in LPS order, spacing) through nibabel.

    Not through ITK: its NIfTI reader silently zero-fills a truncated file and turns
    NaN/Inf voxels into 0 (both seen with SimpleITK 2.5); nibabel reports the first and
    keeps the second, so both reach our checks.
    """
    import nibabel as nib
    try:
        image = nib.load(str(path))
        if len(image.shape) > 3:  # trailing singleton dims (X, Y, Z, 1) are still a volume
            image = image.slicer[(slice(None),) * 3 + (0,) * (len(image.shape) - 3)] \
                if all(d == 1 for d in image.shape[3:]) else image
        if len(image.shape) != 3:
            size = "x".join(map(str, image.shape))
            raise VolumeError(path, f"{len(image.shape)}D image of size {size}; need a 3D volume")
        canonical = nib.as_closest_canonical(image)  # RAS
        array = np.asarray(canonical.dataobj, dtype=np.float32)[::-1, ::-1, :]  # -> LPS
        spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    except VolumeError:
        raise
    except Exception as e:
        raise VolumeError(path, f"not a readable image (corrupt, truncated or not NIfTI: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return np.ascontiguousarray(array), spacing


def read_volume(path) -> Volume:
    """Read one volume (file or DICOM series directory) as float32 (X, Y, Z) + spacing.

    Raises VolumeError for anything that is not a finite 3D volume.
    """
    sitk = _sitk()
    path = Path(path)
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        return _checked(*_read_nifti(path), path)
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except VolumeError:
        raise
    except RuntimeError as e:
        detail = str(e).strip().splitlines()
        reason = next((line.strip() for line in detail if "rror" in line or "not" in line.lower()), "")
        raise VolumeError(path, f"not a readable image (corrupt, truncated or not an image file){': ' + reason[:120] if reason else ''}") from None
    size = image.GetSize()
    if image.GetDimension() != 3:
        raise VolumeError(path, f"{image.GetDimension()}D image of size {'x'.join(map(str, size))}; need a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel; need a scalar volume")
    image = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    return _checked(np.ascontiguousarray(array), tuple(float(s) for s in image.GetSpacing()), path)


def _checked(array: np.ndarray, spacing, path) -> Volume:
    if not np.isfinite(array).all():
        raise VolumeError(path, f"{int((~np.isfinite(array)).sum())} NaN/Inf voxels")
    return Volume(array, spacing, str(path))


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
    return Volume(sitk.GetArrayFromImage(out).transpose(2, 1, 0).copy(), spacing, volume.source)


def hu_window(array: np.ndarray, low: float = -1000.0, high: float = 1000.0) -> np.ndarray:
    """Clip to [low, high], scale to [0, 1] (the Genesis CT normalisation)."""
    return ((np.clip(array, low, high) - low) / (high - low)).astype(np.float32)


def to_unit_range(array: np.ndarray, modality: str = "ct", window=(-1000.0, 1000.0)) -> tuple[np.ndarray, tuple]:
    """([0, 1] array, window used): CT through the HU window, MR through its percentiles."""
    if modality == "mr":
        return percentile_window(array)
    low, high = window
    return hu_window(array, low, high), (float(low), float(high))


def percentile_window(array: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[np.ndarray, tuple]:
    """MR and other uncalibrated modalities: window between two percentiles."""
    low, high = np.percentile(array, [low_pct, high_pct])
    if high <= low:
        high = low + 1.0
    return hu_window(array, float(low), float(high)), (float(low), float(high))
