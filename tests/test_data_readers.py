"""Readers give the same canonical volume from every format; bad inputs fail clearly."""

from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from genesis_jax.data import find_inputs, read_volume, sample_path  # noqa: E402

# The bundled sample (a crop of the project's test chest CT, voxels [32:192, 24:152, 40:136]
# of it): every clone has it, so a user's run checks what CI checks.
SAMPLE_CT = sample_path()


@pytest.fixture(scope="module")
def ct_crop():
    """An 80 x 72 x 48 crop of the chest CT (voxels [40:120, 30:102, 60:108] of the full
    scan, taken from the bundled sample), HU clipped at -1024 (DICOM stores HU + 1024 unsigned)."""
    image = sitk.ReadImage(str(SAMPLE_CT))[8:88, 6:78, 20:68]
    return sitk.Maximum(image, -1024)


def write_dicom_series(image, directory: Path, series_uid=None, shuffle_names=True):
    """One CT slice per file, stored unsigned with RescaleIntercept -1024, names out of order."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    directory.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X)
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    depth = array.shape[0]
    for z in range(depth):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, uid = CTImageStorage, generate_uid()
        meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = uid, ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = CTImageStorage, uid, study, series_uid
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "genesis-test", z + 1
        ds.ImagePositionPatient = [float(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z))]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(image.GetSpacing()[:2])
        ds.SliceThickness = image.GetSpacing()[2]
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (array[z].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        name = (z * 7) % depth if shuffle_names else z  # file order is not slice order
        ds.save_as(directory / f"IM{name:04d}", enforce_file_format=True)
    return directory


def expected_array(image):
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)


def test_every_format_reads_to_the_same_volume(ct_crop, tmp_path):
    expected = expected_array(ct_crop)
    paths = []
    for name in ("ct.nii", "ct.nii.gz", "ct.mhd", "ct.mha", "ct.nrrd"):
        sitk.WriteImage(ct_crop, str(tmp_path / name), True)
        paths.append(tmp_path / name)
    paths.append(write_dicom_series(ct_crop, tmp_path / "dicom"))
    for path in paths:
        volume = read_volume(path)
        np.testing.assert_array_equal(volume.array, expected, err_msg=str(path))
        np.testing.assert_allclose(volume.spacing, (1.5, 1.5, 1.5), err_msg=str(path))
        # one grid in LPS mm whatever the format (the channels of a case are compared by it)
        np.testing.assert_allclose(volume.affine, read_volume(paths[0]).affine, atol=1e-3, err_msg=str(path))
        np.testing.assert_allclose(volume.affine[:3, 3], ct_crop.GetOrigin(), atol=1e-3, err_msg=str(path))


def test_orientation_is_canonical(ct_crop, tmp_path):
    """The same anatomy stored with flipped X and Y axes (RAS-like storage) reads identically."""
    flipped = sitk.Flip(ct_crop, [True, True, False])  # same physical image, other storage order
    assert flipped.GetDirection() != ct_crop.GetDirection()
    sitk.WriteImage(flipped, str(tmp_path / "flipped.nii.gz"))
    np.testing.assert_array_equal(read_volume(tmp_path / "flipped.nii.gz").array, expected_array(ct_crop))
    sitk.WriteImage(ct_crop, str(tmp_path / "plain.mha"))
    np.testing.assert_allclose(read_volume(tmp_path / "flipped.nii.gz").affine, read_volume(tmp_path / "plain.mha").affine,
                               atol=1e-3)


def test_find_inputs_recurses_and_ignores_companions(ct_crop, tmp_path):
    (tmp_path / "a").mkdir()
    sitk.WriteImage(ct_crop, str(tmp_path / "a" / "x.mhd"))  # writes x.raw beside it
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    write_dicom_series(ct_crop, tmp_path / "b" / "series1")
    found = find_inputs([tmp_path])
    assert found == [tmp_path / "a" / "x.mhd", tmp_path / "b" / "series1"]


def test_embedded_sample_is_a_chest_ct_crop():
    volume = read_volume(sample_path())
    assert volume.array.shape == (160, 128, 96)
    assert volume.spacing == (1.5, 1.5, 1.5)
    assert volume.array.min() < -900 and volume.array.max() > 500  # air and bone/contrast, in HU
    assert sample_path().stat().st_size <= 3_000_000


# ---------------------------------------------------------------- bad inputs

def bad_inputs(tmp_path, ct_crop):
    """name -> (path, the words the one-line error must contain)."""
    cases = {}
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(ct_crop, str(good))
    data = good.read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp_path / "truncated.nii.gz", "not a readable image")
    sitk.WriteImage(ct_crop[:, :, 10], str(tmp_path / "flat.nii.gz"))
    cases["2d"] = (tmp_path / "flat.nii.gz", "2D image")
    four = sitk.JoinSeries([ct_crop, ct_crop])
    sitk.WriteImage(four, str(tmp_path / "fourd.nii.gz"))
    cases["4d"] = (tmp_path / "fourd.nii.gz", "4D image")
    sitk.WriteImage(ct_crop[:40, :40, :20], str(tmp_path / "small.nii.gz"))
    cases["small"] = (tmp_path / "small.nii.gz", "smaller than one 64x64x35 crop")
    nan = sitk.Cast(ct_crop, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(nan)
    array[5, 5, 5], array[6, 6, 6] = np.nan, np.inf
    with_nan = sitk.GetImageFromArray(array)
    with_nan.CopyInformation(nan)
    sitk.WriteImage(with_nan, str(tmp_path / "nan.nii.gz"))
    cases["nan"] = (tmp_path / "nan.nii.gz", "2 NaN/Inf voxels")
    (tmp_path / "empty").mkdir()
    cases["empty dir"] = (tmp_path / "empty", "no image files or DICOM series found")
    (tmp_path / "notes.txt").write_text("hello")
    cases["non-image"] = (tmp_path / "notes.txt", "not a readable image")
    mixed = tmp_path / "mixed"
    write_dicom_series(ct_crop[:, :, :24], mixed / "tmp1")
    write_dicom_series(ct_crop[:, :, 24:], mixed / "tmp2")
    for sub in ("tmp1", "tmp2"):
        for f in (mixed / sub).iterdir():
            f.rename(mixed / f"{sub}_{f.name}")
        (mixed / sub).rmdir()
    cases["mixed dicom"] = (mixed, "2 DICOM series mixed in one directory")
    return cases


@pytest.fixture(scope="module")
def bad_cases(tmp_path_factory, ct_crop):
    return bad_inputs(tmp_path_factory.mktemp("bad"), ct_crop)


@pytest.mark.parametrize("case", ["truncated", "2d", "4d", "small", "nan", "empty dir", "non-image", "mixed dicom"])
def test_prepare_stops_at_a_bad_input_with_one_line_and_no_store(case, bad_cases, tmp_path, capsys):
    from genesis_jax.prepare import run
    path, words = bad_cases[case]
    out = tmp_path / "store.zarr"
    code = run([str(SAMPLE_CT), str(path), "--out", str(out), "--filter", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0] and words in err[0], err
    assert not out.exists()
    work = tmp_path / ".store.zarr.preparing"
    if case == "empty dir":  # found when the inputs are listed: before any work
        assert not work.exists()
    else:  # nothing committed; the sample's cubes, done before it, are kept for the rerun
        assert f"(the 1 input(s) done before it are kept in {work}: run the same command again once it is fixed, " \
               f"or with --skip-bad)" in err[0], err


def test_prepare_skip_bad_goes_on_and_lists_every_skipped_file(bad_cases, tmp_path, capsys):
    from genesis_jax.data import open_store
    from genesis_jax.prepare import run
    bad = [str(p) for p, _ in bad_cases.values()]
    out = tmp_path / "store.zarr"
    code = run([str(SAMPLE_CT), *bad, "--out", str(out), "--filter", "none", "--skip-bad"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "1 volume(s) read" in printed and f"{len(bad)} skipped" in printed
    for path in bad:
        assert path in printed
    array, attributes = open_store(out)
    assert array.shape == (32, 64, 64, 32, 1) and len(attributes["skipped"]) == len(bad)


def test_resample_keeps_the_physical_extent_and_values(ct_crop):
    from genesis_jax.data import resample
    volume = read_volume_from_image(ct_crop)
    coarse = resample(volume, (3.0, 3.0, 3.0))
    assert coarse.array.shape == (40, 36, 24) and coarse.spacing == (3.0, 3.0, 3.0)
    # Linear resampling to half resolution: mean HU within 2%, values within the input range.
    assert abs(coarse.array.mean() - volume.array.mean()) < 0.02 * abs(volume.array.mean())
    assert coarse.array.min() >= volume.array.min() and coarse.array.max() <= volume.array.max()
    assert resample(volume, (1.5, 1.5, 1.5)) is volume


def read_volume_from_image(image):
    from genesis_jax.data import Volume
    return Volume(sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32), image.GetSpacing(), "crop")


def test_windows_scale_to_unit_range():
    from genesis_jax.data import hu_window, percentile_window
    hu = np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0], np.float32)
    np.testing.assert_allclose(hu_window(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    mr = np.linspace(0.0, 400.0, 1001, dtype=np.float32)
    unit, (low, high) = percentile_window(mr)
    assert unit.min() == 0.0 and unit.max() == 1.0 and 0.0 < low < 4.0 and 396.0 < high < 400.0
