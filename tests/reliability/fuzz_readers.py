"""Seeded fuzzing of the volume readers, run as its own process by test_damaged_files.py
(so a hang or a crash inside ITK, GDCM or nibabel is seen as one, with its case named).

python tests/reliability/fuzz_readers.py --seed S --cases N --dir D

Small NIfTI (.nii and .nii.gz), MetaImage (.mha) and DICOM-series volumes are damaged
by seeded byte flips (anywhere, or in the first 400 bytes where the headers live),
inserted bytes and truncations; each damaged input is read by read_volume. Every read
must end in a valid volume or in VolumeError, one line naming the file. Prints
"case N FORMAT DAMAGE" before each read and "-> ok|error" after it, then one JSON line
of counts; exits 1 at the first read that breaks the contract (anything else raised, a
message that is not one line naming the file, an invalid volume).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_data_readers import write_dicom_series  # noqa: E402

from genesis_jax.data.volumes import VolumeError, read_volume  # noqa: E402

FORMATS = ("nii", "nii.gz", "mha", "dicom")
DAMAGES = ("flip", "header", "insert", "truncate")


def originals(directory: Path) -> dict:
    """format -> {file name: bytes} of one small volume (12 x 10 x 8 voxels, CT-like values)."""
    array = np.random.default_rng(0).normal(-300, 300, (8, 10, 12)).astype(np.int16)  # (Z, Y, X)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    out = {}
    for fmt in ("nii", "nii.gz", "mha"):
        path = directory / f"volume.{fmt}"
        sitk.WriteImage(image, str(path))
        out[fmt] = {path.name: path.read_bytes()}
    series = write_dicom_series(image, directory / "series", shuffle_names=False)
    out["dicom"] = {f.name: f.read_bytes() for f in sorted(series.iterdir())}
    return out


def damaged(data: bytes, damage: str, rng: random.Random) -> bytes:
    if damage == "truncate":
        return data[: rng.randrange(len(data))]
    if damage == "insert":
        at = rng.randrange(len(data))
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[at:]
    data = bytearray(data)
    span = min(len(data), 400) if damage == "header" else len(data)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(span)] = rng.randrange(256)
    return bytes(data)


def write_case(directory: Path, fmt: str, files: dict, damage: str, rng: random.Random) -> Path:
    """The damaged input: a file, or a series directory with one of its slices damaged."""
    directory.mkdir()
    victim = rng.choice(sorted(files))
    for name, data in files.items():
        (directory / name).write_bytes(damaged(data, damage, rng) if name == victim else data)
    return directory if fmt == "dicom" else directory / victim


def read_outcome(path: Path, read) -> tuple[str, str | None]:
    """("ok" or "error", what breaks the contract or None) of one read."""
    try:
        volume = read(path)
    except VolumeError as e:
        text = str(e)
        if "\n" in text or not text.startswith(str(path)):
            return "error", f"the error is not one line naming the file: {text!r}"
        return "error", None
    except Exception:  # noqa: BLE001 - the contract is: nothing but VolumeError
        return "error", "raised something other than VolumeError:\n" + traceback.format_exc()
    array = volume.array
    if array.ndim != 3 or min(array.shape) < 1 or array.dtype != np.float32 or not np.isfinite(array).all():
        return "ok", f"an invalid volume: shape {array.shape}, dtype {array.dtype}"
    if not all(s > 0 and np.isfinite(s) for s in volume.spacing):
        return "ok", f"an invalid spacing {volume.spacing}"
    return "ok", None


def fuzz(seed: int, cases: int, directory: Path, read=read_volume) -> dict:
    # A count, not a time budget: the same seed then damages the same files the same way
    # on any machine, so a slow CI runner checks exactly what ran here.
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sources = originals(directory)
    counts = {f"{fmt} {outcome}": 0 for fmt in FORMATS for outcome in ("ok", "error")}
    for case in range(cases):
        fmt, damage = rng.choice(FORMATS), rng.choice(DAMAGES)
        path = write_case(directory / f"case{case}", fmt, sources[fmt], damage, rng)
        print(f"case {case} {fmt} {damage}", flush=True)
        outcome, broken = read_outcome(path, read)
        if broken:
            print(f"FAILED: case {case} ({fmt}, {damage}, seed {seed}): {broken}", flush=True)
            sys.exit(1)
        counts[f"{fmt} {outcome}"] += 1
        print(f"-> {outcome}", flush=True)
        shutil.rmtree(directory / f"case{case}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=700, help="damaged inputs to read (700: about a minute)")
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(fuzz(args.seed, args.cases, args.dir)), flush=True)


if __name__ == "__main__":
    main()
