"""python -m genesis_jax.prepare INPUT... --out STORE: CT/MR volumes to a Genesis cube store.

INPUT: files (.nii, .nii.gz, .mhd, .mha, .nrrd) or directories, searched recursively; a
directory of DICOM slices is one volume; @sample is the chest CT crop bundled with the
package (genesis_jax.data.sample_path()). Several channels (multi-modal MR, PET/CT): an
INPUT may be a CSV manifest (a header naming the channels, e.g. t1,t1c,t2,flair, then one
row per case, one path per channel, relative to the CSV's folder; a `label` column, as
fine-tuning manifests have, is left out), or, with --channels t1,t1c,t2,flair, a folder
of case folders, each holding one file per channel named NAME or ending in _NAME
(case_001/case_001_t1.nii.gz); genesis_jax/data/cases.py. Each volume is read,
optionally resampled, windowed to [0, 1] (CT: HU [-1000, 1000]; MR: 0.5-99.5 percentiles), and cut into up to
--cubes-per-volume cubes (--cube-shape, default the paper's 64x64x32) by the Genesis
sampler and filter. Filters: `lung` (the official one, for chest CT) keeps crops that
are mostly lung, and so rejects every crop of a scan without lungs (abdomen, head, MR);
`foreground` keeps crops that are not mostly air, for any body part; `none` keeps all. The store is
built in a work directory beside STORE (.STORE.preparing) and renamed into place at the
end: a failed or killed run publishes nothing and keeps what it finished for the same
command to go on from. STORE may be a TensorStore kvstore URL (gs://, s3://, file://):
pod workers then read it from the bucket (there it is written in place and marked
complete at the end).

Models Genesis 2D (--dims 2): a store of 2D images (N, H, W, C) of --image-shape (default
128 128). Radiographs and other images (PNG, JPEG, TIFF, 8- or 16-bit; single-frame
DICOM, CR/DX, rescaled, MONOCHROME1 inverted) are each windowed by their own 0.5-99.5
percentiles and resized whole: one image per file. Volumes are sliced across
--slice-axis (default z): crops of (H, W) one slice deep, sampled, filtered and windowed
as cubes are (CT: the HU window). genesis_jax/data/images.py.

By default the first bad input stops the run with one line naming the file and the
problem (exit code 1). With --skip-bad, bad inputs are skipped and listed at the end.

Archives (docs/data.md, "Archives"): --workers N reads and samples N inputs at once in
worker processes (default: one per core, as many as memory holds at 4 GiB each); the
store does not depend on N. A killed or failed prepare keeps the inputs it finished:
the same command again goes on from there and ends with the store an uninterrupted
run writes, bit for bit (other inputs or options are refused, naming the change, unless
--restart). Several machines: --shard I/N on each (a SLURM array task, a pod host)
writes its part of the inputs into the store's work area, then --finalize --out STORE
checks every shard finished and commits the store in the order a single run writes.

Examples:
    python -m genesis_jax.prepare /data/LUNA16 --out cubes.zarr                # chest CTs, the paper's cubes
    python -m genesis_jax.prepare brats.csv --out mr.zarr --modality mr --filter foreground --filter-channel t1
    python -m genesis_jax.prepare /data/BraTS --channels t1,t1ce,t2,flair --modality mr --filter none --out mr.zarr
    python -m genesis_jax.prepare abdomen/*.nii.gz --out cubes.zarr --filter foreground
    python -m genesis_jax.prepare @sample --out small.zarr --filter foreground --cube-shape 32 32 16
        # @sample: the chest CT crop bundled with genesis-jax; 32x32x16 cubes for a CPU
    python -m genesis_jax.prepare --dims 2 /data/ChestXray14/images --out xrays.zarr   # radiographs, 128x128
    python -m genesis_jax.prepare --dims 2 /data/LUNA16 --out slices.zarr --slice-axis z --image-shape 128 128
    python -m genesis_jax.prepare /data/archive --out /shared/cubes.zarr --shard 3/16   # then, once all 16 ran:
    python -m genesis_jax.prepare --finalize --out /shared/cubes.zarr
"""

from __future__ import annotations

import argparse
import math
import sys

import genesis_jax
from genesis_jax.data import archive
from genesis_jax.data.batches import sampler_crop
from genesis_jax.data.cases import Case, find_cases, is_manifest, parse_channel_names, parse_modalities, \
    read_manifest, unknown_modalities
from genesis_jax.data.images import SLICE_AXES, find_2d_inputs
from genesis_jax.data.parts import Shard
from genesis_jax.data.preparing import Recipe, input_name
from genesis_jax.data.sampler import FILTERS, SamplerConfig
from genesis_jax.data.volumes import VolumeError, find_inputs
from genesis_jax.errors import UserError


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m genesis_jax.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="volume files or directories (@sample: the "
                        "bundled chest CT crop)")
    parser.add_argument("--out", required=True, help="the cube store to create: a directory (replaced if it exists) "
                        "or a TensorStore kvstore URL (gs://bucket/cubes.zarr, s3://..., file://...)")
    parser.add_argument("--cubes-per-volume", type=int, default=32)
    parser.add_argument("--tries-per-cube", type=int, default=50, help="at most this many tries per wanted cube")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--filter", choices=FILTERS, default="lung",
                        help="lung (default, the official chest-CT filter): keep crops that are mostly lung, which "
                        "rejects every crop of a scan without lungs; foreground: keep crops that are not mostly air "
                        "(abdomen, head, any body part); none: keep every crop")
    parser.add_argument("--cube-shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="cube size in voxels, each a multiple of 8 (default 64 64 32, the paper's; "
                        "32 32 16 for CPU-sized runs, with --config.data.cube_shape='(32, 32, 16)' in train)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3,
                        help="3: cubes (default); 2: 2D images, Models Genesis 2D (radiographs, volume slices)")
    parser.add_argument("--image-shape", type=int, nargs=2, metavar=("H", "W"),
                        help="--dims 2: image size in pixels, each a multiple of 8 (default 128 128; 32 for "
                        "model.arch=resnet18_unet)")
    parser.add_argument("--slice-axis", choices=SLICE_AXES, default="z",
                        help="--dims 2: the volume axis slices are cut across (default z: axial slices of a CT)")
    parser.add_argument("--modality", default="ct", help="ct (HU window) or mr (0.5-99.5 percentiles), for every "
                        "channel, or one per channel in channel order: --modality ct,mr (PET/CT: mr windows PET by "
                        "its percentiles)")
    parser.add_argument("--channels", help="with folder INPUTs: the channel names, e.g. t1,t1ce,t2,flair; each case "
                        "folder holds one file per channel, named NAME or ending in _NAME")
    parser.add_argument("--filter-channel", metavar="NAME", help="the channel the filter judges (default the first)")
    parser.add_argument("--window", type=float, nargs=2, default=(-1000.0, 1000.0), metavar=("LOW", "HIGH"),
                        help="CT HU window (default -1000 1000)")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                        help="resample to this spacing first (one value or three, X Y Z)")
    parser.add_argument("--border", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="corner margins in voxels (default: min(100/100/30, slack // 4) per axis)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable or unusable inputs and list them")
    parser.add_argument("--workers", type=int, help="inputs prepared at once, each in a worker process (default: one "
                        "per core, as many as memory holds at 4 GiB each; 1: in this process)")
    parser.add_argument("--shard", metavar="I/N", help="prepare inputs I, I+N, I+2N, ... into the store's work area "
                        "(I from 0; a SLURM array task, a pod host); then --finalize commits the store")
    parser.add_argument("--finalize", action="store_true", help="commit a store whose N shards have all finished "
                        "(takes only --out)")
    parser.add_argument("--restart", action="store_true", help="discard an unfinished prepare of this store (this "
                        "shard's) and start over")
    return check_args(parser, parser.parse_args(argv))


def check_args(parser, args):
    """args, each value checked (parser.error names the flag and exits 2)."""
    wrong = unknown_modalities(args.modality)
    if wrong:
        parser.error(f"argument --modality: invalid choice: {wrong[0]!r} (choose from ct, mr, xray; or one per "
                     f"channel in channel order: ct,mr)")
    if args.spacing is not None and len(args.spacing) not in (1, 3):
        parser.error("--spacing takes one value or three (X Y Z)")
    if args.cubes_per_volume < 1 or args.tries_per_cube < 1:
        parser.error("--cubes-per-volume and --tries-per-cube must be >= 1")
    if args.spacing is not None and not all(math.isfinite(s) and s > 0 for s in args.spacing):
        parser.error(f"--spacing {' '.join(map(str, args.spacing))}: each spacing must be a positive number of mm")
    if not (math.isfinite(args.window[0]) and math.isfinite(args.window[1]) and args.window[0] < args.window[1]):
        parser.error(f"--window {args.window[0]:g} {args.window[1]:g}: need LOW < HIGH (HU)")
    if args.border is not None and min(args.border) < 0:
        parser.error(f"--border {' '.join(map(str, args.border))}: margins must be >= 0")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: must be >= 0")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: must be >= 1")
    try:
        args.shard = Shard.parse(args.shard) if args.shard else None
    except ValueError:
        parser.error(f"--shard {args.shard}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
    if args.finalize and (args.inputs or args.shard):
        parser.error("--finalize takes no INPUT and no --shard: the shards recorded their inputs")
    if not args.finalize and not args.inputs:
        parser.error("the following arguments are required: INPUT")
    if args.dims == 2 and args.cube_shape is not None:
        parser.error("--cube-shape sizes 3D cubes; with --dims 2 pass --image-shape H W")
    if args.dims == 3 and args.image_shape is not None:
        parser.error("--image-shape sizes 2D images: pass --dims 2 (or --cube-shape X Y Z for cubes)")
    args.shape = tuple(args.image_shape or (128, 128)) if args.dims == 2 else tuple(args.cube_shape or (64, 64, 32))
    flag = "--cube-shape" if args.dims == 3 else "--image-shape"
    if any(d < 8 or d % 8 for d in args.shape):
        parser.error(f"{flag} {' '.join(map(str, args.shape))}: each size must be a multiple of 8")
    return args


def collect_cases(args, skipped: list) -> tuple[tuple[str, ...], dict]:
    """(channel names, {case name: Case, or the Path of a 2D image}, ordered and
    duplicate-free) of the INPUTs: plain volumes are one channel, "image"; manifests and
    --channels folders name theirs, and every INPUT must name the same; with --dims 2,
    2D images are one channel, "image". Bad inputs stop the run (UserError) or, with
    --skip-bad, go to `skipped`."""
    named = parse_channel_names(args.channels, "--channels") if args.channels else None
    cases, channels = {}, None
    for argument in args.inputs:
        if argument == "@sample":
            from genesis_jax.data import sample_path
            argument = str(sample_path())
        try:
            if is_manifest(argument):
                found_channels, found = read_manifest(argument, with_label="optional")  # labels: not a channel
            elif named:
                found_channels, found = named, find_cases(argument, named)
            elif args.dims == 2:
                images, volumes = find_2d_inputs([argument])
                found_channels, found = ("image",), [Case.single(p) for p in volumes]
                cases.update((str(p), p) for p in images)
            else:
                found_channels, found = ("image",), [Case.single(p) for p in find_inputs([argument])]
        except VolumeError as e:
            if not args.skip_bad:
                raise
            skipped.append(str(e))
            continue
        if channels is not None and found_channels != channels:
            raise UserError(f"{argument}: channels {','.join(found_channels)}, the INPUTs before it "
                            f"{','.join(channels)}: every INPUT of a store must have the same channels")
        channels = found_channels
        cases.update((case.name, case) for case in found)
    return channels or named or ("image",), cases


def recipe_of(args, modalities, filter_channel: int) -> Recipe:
    cfg = SamplerConfig(crop=sampler_crop(args.shape), filter=args.filter, cubes_per_volume=args.cubes_per_volume,
                        tries_per_cube=args.tries_per_cube, border=tuple(args.border) if args.border else "auto",
                        filter_channel=filter_channel)
    spacing = None if not args.spacing else tuple(args.spacing * 3 if len(args.spacing) == 1 else args.spacing)
    return Recipe(args.dims, args.shape, cfg, tuple(modalities), args.seed, tuple(args.window), spacing,
                  args.slice_axis)


def plan_of(args, recipe: Recipe, channels, names: list[str], skipped: list[str]) -> dict:
    """What a prepare's cubes depend on (data/parts.py compares it on resume): the inputs,
    the options the store records (attributes), and those only its sources show (options)."""
    attributes = {"seed": args.seed, "filter": args.filter, "modality": args.modality,
                  "modalities": list(recipe.modalities), "filter_channel": channels[recipe.sampler.filter_channel],
                  "spacing": args.spacing, "cube_shape": list(args.shape), "cubes_per_volume": args.cubes_per_volume,
                  "tries_per_cube": args.tries_per_cube}
    options = {"window": list(args.window), "border": args.border, "dims": args.dims,
               "slice_axis": args.slice_axis if args.dims == 2 else None}
    return {"version": genesis_jax.__version__, "inputs": names, "skipped": skipped, "channels": list(channels),
            "attributes": attributes, "options": options}


def run(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.finalize:
            return archive.finalize(args)
        skipped = []
        channels, cases = collect_cases(args, skipped)
        modalities = parse_modalities(args.modality, channels)
        if args.filter_channel and args.filter_channel not in channels:
            raise UserError(f"--filter-channel {args.filter_channel}: not a channel ({', '.join(channels)})")
        recipe = recipe_of(args, modalities, channels.index(args.filter_channel) if args.filter_channel else 0)
        items = list(cases.values())
        plan = plan_of(args, recipe, channels, [input_name(i) for i in items], skipped)
        return archive.prepare(args, recipe, plan, items)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def main():
    sys.exit(run())


if __name__ == "__main__":
    main()
