"""prepare's throughput with 1, 2, ... worker processes over a set of real CT volumes, the
time of each stage, and the model of where more cores stop helping.

    python -m benchmarks.prepare_throughput --copies 40 --workers 1 2 --json benchmarks/results/prepare_cpu.json
    python -m benchmarks.prepare_throughput --full-size 4 --workers 1 2      # 499x358x409 CTs

The inputs are crops of the shared chest CT (233 x 167 x 191, 1.5 mm) at --copies
different corners, each its own .nii.gz (a real read and gzip decode every time), or
with --full-size, crops of it resampled to 0.7 mm (499 x 358 x 409, a full-size chest CT).
Stages, timed one volume at a time in this process: reading (gzip, reorientation),
windowing, sampling (worker work), and writing the cubes and the journal entry (the
main process's work, one input at a time). Then `python -m genesis_jax.prepare` runs
with each worker count, and as --shards shard processes at once followed by --finalize;
the stores must be equal file for file.

Model: a worker needs t_worker per volume (reading, windowing, sampling), the main
process t_main (writing the cubes, the journal entry); the pool takes t_start to start
(spawned processes importing genesis_jax). N workers on C cores (the default: N = C)
prepare V volumes in t_start + V * max(t_worker / N, t_main, (t_worker + t_main) / C):
the workers, the main process, or the cores they share bind, until the disk's
bandwidth (compressed bytes read and cube bytes written per volume, both printed) binds
first. On C = 2 the cores bind at once.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.common import ROOT, run_cli, write_json

CHEST_CT = ROOT.parent / "shared" / "data" / "chest_ct.nii.gz"
PREPARE = ["--filter", "lung", "--cubes-per-volume", "32"]  # the paper's cubes (64 x 64 x 32) and filter


def make_inputs(folder: Path, copies: int, full_size: int) -> list[Path]:
    """Distinct .nii.gz crops of the chest CT (or of its 0.7 mm resample)."""
    image = nib.load(str(CHEST_CT))
    array, affine = np.asarray(image.dataobj), image.affine
    count, crop = copies, np.array(array.shape) - 8
    if full_size:
        from scipy.ndimage import zoom
        array = zoom(array.astype(np.float32), 1.5 / 0.7, order=1).astype(np.int16)
        affine = affine.copy()
        affine[:3, :3] *= 0.7 / 1.5
        count, crop = full_size, np.array(array.shape) - 16
    paths = []
    for i in range(count):
        corner = np.array([(i * 3) % 9, (i * 5) % 9, (i * 7) % 9]) * (2 if full_size else 1)
        part = array[corner[0]:corner[0] + crop[0], corner[1]:corner[1] + crop[1], corner[2]:corner[2] + crop[2]]
        shifted = affine.copy()
        shifted[:3, 3] += affine[:3, :3] @ corner
        paths.append(folder / f"ct{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(part, shifted), str(paths[-1]))
    return paths


def stage_times(paths: list[Path], folder: Path) -> dict:
    """Seconds per volume of each stage (median over the volumes), in this process."""
    from genesis_jax.data.cases import Case, read_case, unit_channels
    from genesis_jax.data.sampler import SamplerConfig, sample_cubes
    from genesis_jax.data.store import create_cube_array, write_cubes
    # write and transfer: the main process's share (transfer: the cubes' pickle round trip from a worker)
    stages = {"read": [], "window": [], "sample": [], "write": [], "transfer": []}
    array = create_cube_array(folder / "stages.zarr", (64, 64, 32, 1), {})
    count = 0
    for index, path in enumerate(paths):
        start = time.perf_counter()
        volumes = read_case(Case.single(path))
        stages["read"].append(time.perf_counter() - start)
        start = time.perf_counter()
        unit, _ = unit_channels(volumes, ("ct",))
        stages["window"].append(time.perf_counter() - start)
        start = time.perf_counter()
        cubes, _ = sample_cubes(unit, SamplerConfig(), np.random.default_rng([0, index]))
        stages["sample"].append(time.perf_counter() - start)
        start = time.perf_counter()
        array = write_cubes(array, count, cubes)
        hashlib.sha256(cubes.tobytes())
        (folder / f"entry{index}.json").write_text('{"index": %d}' % index)  # the journal entry, as prepare writes it
        stages["write"].append(time.perf_counter() - start)
        start = time.perf_counter()
        pickle.loads(pickle.dumps(cubes))
        stages["transfer"].append(time.perf_counter() - start)
        count += len(cubes)
    result = {name: float(np.median(times)) for name, times in stages.items()}
    result["cubes_per_volume"] = count / len(paths)
    return result


def worker_peak_bytes(path: Path) -> int:
    """Peak resident bytes of a fresh process that prepares one volume as a worker does
    (data/preparing.prepare_input, the paper's cubes and lung filter)."""
    code = ("import resource; from genesis_jax.data.cases import Case; "
            "from genesis_jax.data.preparing import Recipe, prepare_input; "
            "from genesis_jax.data.sampler import SamplerConfig; "
            "recipe = Recipe(3, (64, 64, 32), SamplerConfig(), ('ct',), 0, (-1000.0, 1000.0), None); "
            f"prepare_input(Case.single({str(path)!r}), 0, recipe); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=ROOT).stdout.split()[-1]) * 1024


def prepare_runs(folder: Path, workers: list[int]) -> list[dict]:
    runs = []
    for count in workers:
        out = folder / f"workers{count}.zarr"
        seconds, printed = run_cli(["-m", "genesis_jax.prepare", str(folder / "inputs"), "--out", str(out),
                                    "--workers", str(count), *PREPARE])
        rates = re.search(r"\((\d+) volumes in ([\d.]+) s.*?: ([\d.]+) volumes/s, ([\d.]+) cubes/s\)", printed)
        runs.append({"workers": count, "wall_s": seconds, "volumes": int(rates[1]), "work_s": float(rates[2]),
                     "volumes_per_s": float(rates[3]), "cubes_per_s": float(rates[4]),
                     "store": files_digest(out)})
    return runs


def sharded_run(folder: Path, shards: int) -> dict:
    """`shards` shard processes at once (1 worker each, as on separate machines), then
    finalize: the seconds of each phase and the store's files."""
    out, inputs = folder / f"shards{shards}.zarr", str(folder / "inputs")
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "genesis_jax.prepare", inputs, "--out", str(out), "--workers",
                               "1", "--shard", f"{i}/{shards}", *PREPARE], cwd=ROOT, stdout=subprocess.DEVNULL)
             for i in range(shards)]
    if any(proc.wait() for proc in procs):
        sys.exit("error: a shard failed")
    shards_s = time.perf_counter() - start
    finalize_s, printed = run_cli(["-m", "genesis_jax.prepare", "--finalize", "--out", str(out)])
    copy = re.search(r"\((\d+) inputs in ([\d.]+) s.*?([\d.]+) cubes/s\)", printed)
    return {"shards": shards, "shards_s": shards_s, "finalize_s": finalize_s, "finalize_copy_s": float(copy[2]),
            "finalize_cubes_per_s": float(copy[3]), "store": files_digest(out)}


def files_digest(store: Path) -> dict:
    return {str(f.relative_to(store)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(store.rglob("*")) if f.is_file()}


def pool_start_seconds(workers: int = 2) -> float:
    """Seconds for a pool of spawned workers to start and import what a worker imports."""
    from concurrent.futures import ProcessPoolExecutor
    from genesis_jax.data.workers import _CONTEXT
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=_CONTEXT) as pool:
        list(pool.map(_import_prepare, range(workers)))
    return time.perf_counter() - start


def _import_prepare(_) -> None:
    import genesis_jax.prepare  # noqa: F401  (a worker of `python -m genesis_jax.prepare` imports it as its main)


def model(stages: dict, cores: list[int], volumes: int) -> list[dict]:
    """Volumes/s with N = C workers on C cores, over `volumes` volumes, and what binds."""
    worker = stages["read"] + stages["window"] + stages["sample"]
    rows = []
    for n in cores:
        main = stages["write"] + (stages["transfer"] if n > 1 else 0.0)
        bounds = {"workers": worker / n, "main process (writing)": main, "cores": (worker + main) / n}
        per_volume = max(bounds.values())
        seconds = (stages["pool_start"] if n > 1 else 0.0) + volumes * per_volume
        rows.append({"cores": n, "volumes_per_s": volumes / seconds, "steady_volumes_per_s": 1 / per_volume,
                     "bound": max(bounds, key=bounds.get)})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8, help="crops of the chest CT (default 8)")
    parser.add_argument("--full-size", type=int, default=0, metavar="N", help="N crops of a 0.7 mm resample instead")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shards", type=int, default=2, help="also: this many shards at once, then finalize "
                        "(0: not)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "inputs").mkdir()
        paths = make_inputs(folder / "inputs", args.copies, args.full_size)
        shape = list(nib.load(str(paths[0])).shape)
        read_bytes = float(np.mean([p.stat().st_size for p in paths]))
        stages = stage_times(paths, folder)
        stages["pool_start"] = pool_start_seconds()
        peak = worker_peak_bytes(paths[0])
        runs = prepare_runs(folder, args.workers)
        sharded = sharded_run(folder, args.shards) if args.shards else None
    assert all(run["store"] == runs[0]["store"] for run in [*runs, *[sharded] * bool(sharded)]), \
        "the stores differ between worker counts or shards"
    for run in [*runs, *[sharded] * bool(sharded)]:
        run["store"] = f"{len(run['store'])} files, equal for every worker count and to the sharded store"
    written = stages["cubes_per_volume"] * 64 * 64 * 32 * 4
    result = {"volumes": len(paths), "shape": shape, "gz_bytes_per_volume": read_bytes, "stages_s": stages,
              "cube_bytes_per_volume_raw": written, "worker_peak_bytes": peak, "runs": runs,
              "sharded": sharded, "model": model(stages, [1, 2, 4, 8, 16, 32, 64], len(paths))}
    print(f"{len(paths)} volumes {'x'.join(map(str, shape))}, {read_bytes / 2**20:.1f} MiB .nii.gz each; per volume: "
          + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items() if k != "cubes_per_volume")
          + f"; {stages['cubes_per_volume']:.1f} cubes ({written / 2**20:.0f} MiB raw); worker peak "
          f"{peak / 2**30:.2f} GiB")
    print("| workers | volumes/s | cubes/s | work s | wall s (with start-up) |\n|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run['workers']} | {run['volumes_per_s']:.2f} | {run['cubes_per_s']:.1f} | {run['work_s']:.1f} "
              f"| {run['wall_s']:.1f} |")
    if sharded:
        print(f"{args.shards} shards at once (1 worker each): {sharded['shards_s']:.1f} s, then finalize "
              f"{sharded['finalize_s']:.1f} s (wall, with start-up; its copy {sharded['finalize_copy_s']:.1f} s, "
              f"{sharded['finalize_cubes_per_s']:.0f} cubes/s); the store equals the single run's, file for file")
    print(f"| cores = workers (model) | volumes/s, {len(paths)} volumes | volumes/s, steady | bound |\n"
          "|---:|---:|---:|---|")
    for row in result["model"]:
        print(f"| {row['cores']} | {row['volumes_per_s']:.2f} | {row['steady_volumes_per_s']:.2f} | {row['bound']} |")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
