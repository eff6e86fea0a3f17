"""prepare --dims 2: radiographs and other images (PNG, JPEG, TIFF, DICOM) and slices of
volumes into a 2D store (N, H, W, C), windowed and sized as the docs say."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genesis_jax.data.cases import unit_channels
from genesis_jax.data.images import radiograph_of, read_image, slices_last
from genesis_jax.data.sampler import SamplerConfig, sample_cubes
from genesis_jax.data.store import open_store, read_store_channels, store_dims
from genesis_jax.data.volumes import read_volume, to_unit_range
from genesis_jax.prepare import run

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CROPPED_CT = SHARED / "chest_ct_cropped.nii.gz"


def write_dicom_radiograph(path, pixels: np.ndarray, photometric="MONOCHROME1", slope=2.0, intercept=-100.0):
    """A single-frame DX image written with pydicom, as an X-ray system stores one."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True) if pydicom.__version__ >= "3" else ds.save_as(str(path),
                                                                                                  write_like_original=False)


def test_dicom_radiographs_are_rescaled_and_monochrome1_inverted(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 4000, (40, 56)).astype(np.uint16)
    write_dicom_radiograph(tmp_path / "mono1.dcm", pixels)
    write_dicom_radiograph(tmp_path / "mono2.dcm", pixels, photometric="MONOCHROME2")
    rescaled = pixels * 2.0 - 100.0
    np.testing.assert_array_equal(read_image(tmp_path / "mono2.dcm"), rescaled)
    # MONOCHROME1 inverted over the stored 12 bits' range: (4095 - P) * 2 - 100
    np.testing.assert_array_equal(read_image(tmp_path / "mono1.dcm"), (4095.0 - pixels) * 2.0 - 100.0)


def test_8_and_16_bit_pictures_read_as_their_values(tmp_path):
    values = np.random.default_rng(1).integers(0, 65535, (30, 20)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "wide.png")
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray((values >> 8).astype(np.uint8)).save(tmp_path / "narrow.png")
    np.testing.assert_array_equal(read_image(tmp_path / "wide.png"), values)
    np.testing.assert_array_equal(read_image(tmp_path / "wide.tif"), values)
    np.testing.assert_array_equal(read_image(tmp_path / "narrow.png"), values >> 8)


def test_radiographs_to_a_2d_store(tmp_path, capsys):
    """A folder of a DRR (16-bit PNG), a JPEG, a DICOM radiograph and a broken PNG: with
    --skip-bad three 64x64 images, each in [0, 1] through its own percentiles, the broken
    file named; without it, one line naming it and no store."""
    drr = radiograph_of(read_volume(CROPPED_CT))
    wide = (drr / drr.max() * 65535).astype(np.uint16)
    folder = tmp_path / "xrays"
    folder.mkdir()
    Image.fromarray(wide).save(folder / "drr.png")
    Image.fromarray((wide >> 8).astype(np.uint8)).save(folder / "drr.jpg", quality=95)
    write_dicom_radiograph(folder / "drr.dcm", wide >> 4)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert run(["--dims", "2", str(folder), "--out", str(tmp_path / "bad.zarr"), "--image-shape", "64", "64"]) == 1
    assert f"error: {folder / 'broken.png'}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "bad.zarr").exists()

    assert run(["--dims", "2", str(folder), "--out", str(tmp_path / "x.zarr"), "--image-shape", "64", "64",
                "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "3 input(s) read, 1 skipped, 3 images written" in out and "broken.png" in out
    array, attributes = open_store(tmp_path / "x.zarr")
    assert array.shape == (3, 64, 64, 1) and store_dims(attributes) == 2
    assert read_store_channels(tmp_path / "x.zarr") == ["image"]
    images = array.read().result()
    # each image's percentiles span [0, 1]; resizing averages pixels, so the ends are near, not at, 0 and 1
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images.min(axis=(1, 2, 3)) < 0.01).all() and (images.max(axis=(1, 2, 3)) > 0.99).all()
    sources = {Path(s["path"]).name: s for s in attributes["sources"]}
    assert sources["drr.png"]["window_rule"] == "percentiles 0.5-99.5"
    expected = to_unit_range(wide.astype(np.float32), "xray")[0]
    assert sources["drr.png"]["shape"] == list(expected.shape)


def test_volume_slices_are_the_samplers_one_slice_crops(tmp_path):
    """--dims 2 on a CT: the stored images are the 3D sampler's (H, W, 1) crops of the
    CT-windowed volume with its slice axis last, with the seed's draws."""
    assert run(["--dims", "2", str(CROPPED_CT), "--out", str(tmp_path / "s.zarr"), "--image-shape", "64", "64",
                "--slice-axis", "y", "--filter", "foreground", "--cubes-per-volume", "5"]) == 0
    array, attributes = open_store(tmp_path / "s.zarr")
    unit, _ = unit_channels([read_volume(CROPPED_CT)], ("ct",))
    expected, _ = sample_cubes(slices_last(unit, "y"), SamplerConfig(crop=(64, 64, 1), filter="foreground",
                                                                     cubes_per_volume=5), np.random.default_rng([0, 0]))
    np.testing.assert_array_equal(array.read().result(), expected[:, :, :, 0])
    assert attributes["sources"][0]["slice_axis"] == "y" and attributes["cube_shape"] == [64, 64]


def test_3d_flags_with_dims_2_are_refused(capsys):
    with pytest.raises(SystemExit):
        run(["--dims", "2", "x", "--out", "y", "--cube-shape", "64", "64", "32"])
    assert "--cube-shape sizes 3D cubes; with --dims 2 pass --image-shape H W" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["x", "--out", "y", "--image-shape", "64", "64"])
    assert "--image-shape sizes 2D images: pass --dims 2" in capsys.readouterr().err
