"""Damaged input files: each gives one line naming the file, or a valid volume; never a
traceback, a hang, a silently wrong volume or reader noise on stderr.

The fuzzing runs in its own process (fuzz_readers.py) so that a hang or a crash in the
C++ readers is seen and its case named; the cases below it are the failure modes the
fuzzing found, kept as regressions.
"""

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("pydicom")

from fuzz_readers import fuzz, originals  # noqa: E402

from genesis_jax.data.volumes import Volume, VolumeError, read_volume  # noqa: E402

FUZZER = Path(__file__).with_name("fuzz_readers.py")


def run_fuzzer(tmp_path, seed: int, cases: int) -> dict:
    # About 0.1 s a case here; a read that hangs shows as this timeout, its case the last one printed.
    timeout = 120 + cases
    try:
        proc = subprocess.run([sys.executable, str(FUZZER), "--seed", str(seed), "--cases", str(cases),
                               "--dir", str(tmp_path / "fuzz")], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        started = [line for line in (e.stdout or b"").decode().splitlines() if line.startswith("case ")]
        pytest.fail(f"a read hung: no answer within {timeout} s; last started: {started[-1:]}")
    assert proc.returncode == 0, f"rc {proc.returncode} (a crash if negative)\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # What the readers print is ours alone: nibabel's header repairs and warnings, as lines naming the file.
    stray = [line for line in proc.stderr.splitlines()
             if line and not line.startswith(f"warning: {tmp_path / 'fuzz'}")]
    assert not stray, stray[:5]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(counts.values()) == cases, counts
    return counts


def test_fuzzed_files_give_one_line_or_a_valid_volume(tmp_path):
    counts = run_fuzzer(tmp_path, seed=0, cases=80)
    for fmt in ("nii", "nii.gz", "mha", "dicom"):  # every format was damaged both ways
        assert counts[f"{fmt} error"] > 0 and counts[f"{fmt} ok"] > 0, counts


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_minute_of_fuzzing_per_seed(tmp_path, seed):
    run_fuzzer(tmp_path, seed=seed, cases=700)


def test_the_fuzzer_fails_on_a_reader_that_breaks_the_contract(tmp_path):
    def traceback_reader(path):
        raise IndexError("list index out of range")

    def wrong_volume_reader(path):
        return Volume(np.zeros((0, 4, 4), np.float32), (1.0, 1.0, 1.0), str(path))

    for reader in (traceback_reader, wrong_volume_reader):
        with pytest.raises(SystemExit):
            fuzz(seed=0, cases=40, directory=tmp_path / reader.__name__, read=reader)


# ------------------------------------------------- what the fuzzing found, kept as regressions

@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return originals(tmp_path_factory.mktemp("originals"))


def nifti_with_size(sources, tmp_path, size) -> Path:
    data = bytearray(sources["nii"]["volume.nii"])
    struct.pack_into("<4h", data, 40, 3, *size)  # dim[0..3] of the NIfTI-1 header
    path = tmp_path / "sized.nii"
    path.write_bytes(bytes(data))
    return path


def metaimage_with_size(sources, tmp_path, size: str) -> Path:
    data = re.sub(rb"DimSize = [0-9 ]+\n", f"DimSize = {size}\n".encode(), sources["mha"]["volume.mha"])
    path = tmp_path / "sized.mha"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size,words", [((0, 10, 8), "empty or invalid size 0x10x8"),
                                        ((-5, 10, 8), "empty or invalid size -5x10x8"),
                                        ((30000, 30000, 30000), "implausible size 30000x30000x30000")])
def test_a_nifti_header_with_an_impossible_size_is_refused_before_reading(sources, tmp_path, size, words):
    # found: size 0 was read as an empty volume; 30000^3 ran out of memory allocating it
    path = nifti_with_size(sources, tmp_path, size)
    with pytest.raises(VolumeError, match=re.escape(words)):
        read_volume(path)


@pytest.mark.parametrize("size,words", [("0 10 12", "empty or invalid size 0x10x12"),
                                        ("100000 100000 100000", "implausible size 100000x100000x100000")])
def test_a_metaimage_header_with_an_impossible_size_is_refused(sources, tmp_path, size, words):
    path = metaimage_with_size(sources, tmp_path, size)  # found: DimSize 0 was read as an empty volume
    with pytest.raises(VolumeError, match=re.escape(words)):
        read_volume(path)


def series_copy(sources, directory: Path, skip=(), replace=None) -> Path:
    directory.mkdir()
    for name, data in sources["dicom"].items():
        if name not in skip:
            (directory / name).write_bytes(replace.get(name, data) if replace else data)
    return directory


def test_a_series_with_a_missing_slice_is_refused(sources, tmp_path):
    # found: ITK read 7 of 8 slices as an evenly spaced volume, printing only a warning
    names = sorted(sources["dicom"])
    series = series_copy(sources, tmp_path / "series", skip={names[3]})
    with pytest.raises(VolumeError, match=f"slices are not evenly spaced: 5 mm between {names[2]} and {names[4]}, "
                                          f"2.5 mm elsewhere"):
        read_volume(series)


def test_a_series_with_a_damaged_slice_names_it(sources, tmp_path):
    # found: GDCM left the damaged file out of the series silently
    names = sorted(sources["dicom"])
    truncated = sources["dicom"][names[0]][:300]
    series = series_copy(sources, tmp_path / "series", replace={names[0]: truncated})
    with pytest.raises(VolumeError, match=f"1 of its 8 DICOM files are not readable slices of the series "
                                          f"\\({names[0]}\\)"):
        read_volume(series)


def test_a_series_with_notes_beside_it_still_reads(sources, tmp_path):
    series = series_copy(sources, tmp_path / "series")
    (series / "notes.txt").write_text("acquired 2026")
    (series / "DICOMDIR").write_bytes(b"\0" * 200)
    assert read_volume(series).array.shape == (12, 10, 8)


def test_reader_noise_stays_off_stderr_and_its_reason_is_in_the_one_line(sources, tmp_path, capfd):
    # found: MetaIO and ITK printed several lines of their own on stderr around our error
    path = tmp_path / "truncated.mha"
    path.write_bytes(sources["mha"]["volume.mha"][:-100])
    with pytest.raises(VolumeError, match="not a readable image .*data not read completely"):
        read_volume(path)
    assert capfd.readouterr().err == ""


def test_nibabel_header_repairs_are_warnings_naming_the_file(sources, tmp_path, capfd):
    data = bytearray(sources["nii"]["volume.nii"])
    struct.pack_into("<h", data, 252, 116)  # qform_code: not a valid code
    path = tmp_path / "repaired.nii"
    path.write_bytes(bytes(data))
    assert read_volume(path).array.shape == (12, 10, 8)
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"warning: {path}: qform_code 116 not valid; setting to 0 (nibabel's repair of a damaged "
                   f"header)"], err
