"""Models Genesis 2D inputs: radiographs and other 2D images, and slices of volumes.

Images: PNG, JPEG, TIFF (8- or 16-bit grayscale; colour is converted to luminance) and
single-frame DICOM radiographs (CR, DX: the rescale slope and intercept applied, and
MONOCHROME1, where bright means low values, inverted so that bone is bright as in
MONOCHROME2). An image array is (H, W) = (rows, columns). Radiographs have no calibrated
units, so each is windowed by its own 0.5-99.5 percentiles (modality xray), then resized
whole to the requested shape (a chest X-ray's anatomy is the whole image).

Volume slices: the volume's slice axis is moved last and crops of (H, W, 1) are sampled
by the 3D sampler (its corners, borders and filters), so a slice is a cube one voxel
deep, windowed as the volume is (the CT window).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genesis_jax.data.volumes import DICOM_SUFFIXES, PICTURE_SUFFIXES, Volume, VolumeError, _read_itk_file, _sitk, \
    checked_volume, find_inputs, is_dicom_file, is_image_file, read_volume
# DICOM Modality (0008,0060) of projection radiographs: each file is one 2D image. Other
# DICOM files in a folder (CT, MR, PT slices) are a series: a volume, sliced.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "MG", "PX", "IO", "XA", "RF", "DR")
SLICE_AXES = ("x", "y", "z")


def is_picture(path) -> bool:
    return Path(path).name.lower().endswith(PICTURE_SUFFIXES)


def read_volume_or_image(path) -> Volume:
    """read_volume, or for a 2D picture (PNG, JPEG, TIFF) a volume one slice deep, (H, W, 1)
    at 1 mm: how segmentation reads images with their masks, and predict a 2D image."""
    if Path(path).is_file() and is_picture(path):
        return checked_volume(read_image(path)[..., None], (1.0, 1.0, 1.0), path)
    return read_volume(path)


def dicom_modality(path) -> str:
    """The Modality tag of a DICOM file ('' when it has none or cannot be read)."""
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData("0008|0060").strip() if reader.HasMetaDataKey("0008|0060") else ""


def find_2d_inputs(paths) -> tuple[list[Path], list[Path]]:
    """(images, volumes), each sorted, of files and directories for 2D samples. Images:
    PNG, JPEG and TIFF files, DICOM files named explicitly, and in directories the DICOM
    files of a radiograph modality (CR, DX, ...). Volumes: image volumes (NIfTI, MHD, ...)
    and directories of other DICOM files (a CT series), to be sliced. VolumeError for a
    path that is not there or a directory holding neither."""
    images: set[Path] = set()
    volume_paths: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise VolumeError(path, "no such file or directory")
        if path.is_file():
            (images.add(path) if is_picture(path) or is_dicom_file(path) else volume_paths.append(path))
            continue
        before = len(images) + len(volume_paths)
        for directory in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
            files = sorted(p for p in directory.iterdir() if p.is_file())
            images.update(p for p in files if is_picture(p))
            volume_paths.extend(p for p in files if is_image_file(p))
            dicoms = [p for p in files if not is_image_file(p) and not is_picture(p) and is_dicom_file(p)]
            if dicoms and dicom_modality(dicoms[0]) in RADIOGRAPH_MODALITIES:
                images.update(dicoms)
            elif dicoms:
                volume_paths.append(directory)
        if len(images) + len(volume_paths) == before:
            raise VolumeError(path, "no images (PNG, JPEG, TIFF, DICOM), volumes or DICOM series found in this directory")
    return sorted(images), find_inputs(volume_paths) if volume_paths else []


def read_image(path) -> np.ndarray:
    """float32 (H, W) in the file's units (DICOM: rescaled, MONOCHROME1 inverted by the reader);
    VolumeError naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "no such file")
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return _read_dicom_image(path)
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                image = image.convert("L")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VolumeError(path, f"not a readable image ({str(e).splitlines()[0][:160]})") from None
    if array.ndim != 2:
        raise VolumeError(path, f"expected a 2D grayscale image, got an array of shape {array.shape}")
    return _finite(path, array.astype(np.float32))


def _read_dicom_image(path: Path) -> np.ndarray:
    image = _read_itk_file(path)  # SimpleITK applies RescaleSlope and RescaleIntercept
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(path, "a colour DICOM image; radiographs are grayscale")
    array = _sitk().GetArrayFromImage(image).astype(np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise VolumeError(path, f"a DICOM of {array.shape[0]} frames or slices; a radiograph is one 2D image "
                                f"(a CT series is a folder of slices: prepare it as a volume)")
    # MONOCHROME1 (bright means low values) comes back inverted already: SimpleITK's GDCM
    # reader maps it to MONOCHROME2 over the stored bits' range (tests/test_prepare_2d.py).
    return _finite(path, array)


def _finite(path, array: np.ndarray) -> np.ndarray:
    if min(array.shape) < 2:
        raise VolumeError(path, f"an image of {array.shape[0]}x{array.shape[1]} pixels is too small")
    if not np.isfinite(array).all():
        raise VolumeError(path, "the image holds NaN or infinite values")
    return array


def resize(array: np.ndarray, shape) -> np.ndarray:
    """(H, W) float32 resized to shape by bilinear interpolation (PIL, antialiased when shrinking)."""
    from PIL import Image
    if tuple(array.shape) == tuple(shape):
        return array.astype(np.float32)
    resized = Image.fromarray(array.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(resized, np.float32)


def slices_last(volume: np.ndarray, axis: str) -> np.ndarray:
    """volume (X, Y, Z[, C]) with the slice axis moved to the third place: a 2D crop is then
    a (H, W, 1) cube of it, H and W the other two axes in order."""
    index = SLICE_AXES.index(axis)
    return np.moveaxis(volume, index, 2)


def anterior_posterior_axis(affine: np.ndarray) -> int:
    """The array axis closest to the body's anterior-posterior direction (world LPS y)."""
    return int(np.argmax(np.abs(np.asarray(affine)[1, :3])))


def projection(volume, values: np.ndarray) -> np.ndarray:
    """values (on the volume's grid) summed along its anterior-posterior axis, as a
    radiograph is oriented: rows superior (head) first, columns the remaining axis in
    order. float32 (rows, columns)."""
    ap = anterior_posterior_axis(volume.affine) if volume.affine is not None else 1
    summed = np.asarray(values, np.float32).sum(axis=ap) * float(volume.spacing[ap])
    return np.ascontiguousarray(summed.T[::-1]).astype(np.float32)


def radiograph_of(volume) -> np.ndarray:
    """A digitally reconstructed radiograph (DRR) of a CT Volume: the linear attenuation,
    proportional to HU + 1000 (water 1, air 0), integrated along the anterior-posterior
    axis as an X-ray projects it (cm of water): bone and soft tissue bright, the lungs
    dark, as on a PA chest film (projection's orientation). A stand-in for X-rays in
    tests and the demo."""
    attenuation = np.clip(np.asarray(volume.array, np.float32) + 1000.0, 0.0, None) / 1000.0
    return projection(volume, attenuation) / 10.0
