"""`python -m genesis_jax.predict`: segment a whole volume with a fine-tuned model.

    python -m genesis_jax.predict --workdir=RUN --input=CT.nii.gz --out=PRED.nii.gz
        [--labels=GT.nii.gz] [--overlap=0.5] [--blend=gaussian|mean] [--batch=N] [--mesh-space=K]
    python -m genesis_jax.predict --workdir=RUN --input=t1.nii.gz,flair.nii.gz --out=PRED.nii.gz
    python -m genesis_jax.predict --workdir=RUN --input=case.csv --out=PRED.nii.gz

Several channels: --input lists the case's files comma-separated, in the run's channel
order (run_info.json "channels"), or names a CSV whose header names the channels and
whose one row holds the files (columns matched by name; a `label` column is used as
--labels). The channels must share the first's grid.

Loads the run's best checkpoint, windows the input as in training (CT window or MR
percentiles), runs sliding-window inference over the whole volume on the devices
(fixed-size batches of patches split over the mesh; genesis_jax/sliding.py; with
--mesh-space K each window's X axis split over K devices, for windows bigger than one
device, docs/scaling.md), and
writes the label map as NIfTI with the input's shape, affine and voxel order; its
values are the run's raw label values (data.label_values), 0 elsewhere. A voxel gets
the most probable class where that probability exceeds 0.5; with overlapping classes
(label groups such as 1+2+4,1+4,4) every class above 0.5 is predicted, the map shows the
last of them, and class k is written as the one raw value that is in group k and in no
later group (BraTS: 2, 1, 4), or as k where there is none or several. With --labels it also
prints Dice and IoU per class as one JSON line. Any volume size works (padded, then
cropped back). Bad input: one line, exit status 1, nothing written.

A 2D run (--config=segmentation_2d) predicts a volume slice by slice across its slice
axis into the same 3D label map, and a 2D image (PNG, TIFF) into a PNG label map of the
image's size (--out ending .png; --labels a mask image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m genesis_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a fine-tuning run directory (its best checkpoint)")
    parser.add_argument("--input", required=True, help="the volume to segment (NIfTI); several channels: their "
                        "files comma-separated in the run's channel order, or a one-row CSV naming them")
    parser.add_argument("--out", required=True, type=Path, help="where to write the label map (.nii.gz; a 2D "
                        "image's: .png)")
    parser.add_argument("--labels", help="ground-truth label volume on the input's grid: print Dice per class")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--blend", choices=("gaussian", "mean"), default="gaussian")
    parser.add_argument("--batch", type=int, default=0, help="windows per device call (default: the run's batch)")
    parser.add_argument("--mesh-space", type=int, default=1, help="devices sharing each window, its X axis split "
                        "over them (windows bigger than one device; default 1: windows split over the devices)")
    return parser.parse_args(argv)


def load_model(workdir, space: int = 1):
    """(model in eval mode, SegmentationTask, step of the checkpoint); space: devices
    sharing each window (checked against the run's patch before the checkpoint is read)."""
    from genesis_jax.errors import UserError
    from genesis_jax.tasks import SegmentationTask
    from genesis_jax.rundir import load_checkpoint, read_run_config
    cfg = read_run_config(workdir)
    if cfg.task != "segmentation":
        raise UserError(f"{workdir}: a {cfg.task} run; predict needs a segmentation fine-tuning run")
    cfg.mesh.space = space
    task = SegmentationTask(cfg)
    task.check_space(space, "--mesh-space ")
    model, meta = load_checkpoint(cfg, workdir, best=True, task=task)
    model.eval()
    return model, task, meta.get("step")


def read_picture_grid(path):
    """(None, the 2D image as a volume one slice deep (H, W, 1)) for a picture input."""
    from genesis_jax.data.images import read_volume_or_image
    return None, read_volume_or_image(path)


def check_picture(task, input_path, out: Path) -> None:
    """UserError unless a 2D image goes to a 2D run and its map to a .png."""
    from genesis_jax.errors import UserError
    if task.dims != 2:
        raise UserError(f"{input_path}: a 2D image; this run is 3D (data.patch_shape {tuple(task.cfg.data.patch_shape)})"
                        f": predict it with a 2D run (--config=segmentation_2d)")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: a 2D image's label map is written as PNG (--out ending .png)")


def write_picture(out: Path, labels: np.ndarray) -> None:
    """The label map (H, W) as an 8- or 16-bit PNG."""
    from PIL import Image
    dtype = np.uint8 if labels.max() < 256 else np.uint16
    Image.fromarray(labels.astype(dtype)).save(out)


def require_nifti(path) -> None:
    """VolumeError unless path is NIfTI: predict writes its label map on the input's grid."""
    from genesis_jax.data.volumes import VolumeError
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        raise VolumeError(path, "predict writes NIfTI on the input's grid, so it takes NIfTI input "
                                "(convert MHD/DICOM first, e.g. with SimpleITK)")


def read_nifti_grid(path):
    """(nibabel image, its array reordered as genesis_jax reads volumes) for a NIfTI input."""
    import nibabel as nib

    from genesis_jax.data.volumes import read_volume
    require_nifti(path)
    return nib.load(str(path)), read_volume(path)


def to_input_grid(labels_lps: np.ndarray, image):
    """The inverse of data/volumes.py's NIfTI read (closest canonical RAS, then X and Y
    flipped to LPS): labels in the input file's own voxel order."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform
    canonical = nib.as_closest_canonical(image)
    ras = labels_lps[::-1, ::-1, :]
    return apply_orientation(ras, ornt_transform(io_orientation(canonical.affine), io_orientation(image.affine)))


def run_channels(workdir, model) -> list[str]:
    """The run's channel names, in order (run_info.json; runs from before channels: "image")."""
    from genesis_jax.rundir import INFO_FILE
    path = Path(workdir) / INFO_FILE
    recorded = json.loads(path.read_text()).get("channels") if path.is_file() else None
    return recorded or (["image"] if model.in_channels == 1 else [f"channel{c}" for c in range(model.in_channels)])


def input_case(text, channels):
    """(Case of the input's channels in the run's order, label path from a CSV or None)."""
    from genesis_jax.data.cases import Case, is_manifest, read_manifest
    from genesis_jax.errors import UserError
    if is_manifest(text):
        names, cases = read_manifest(text, with_label="optional")
        if len(cases) != 1:
            raise UserError(f"{text}: {len(cases)} rows; predict takes one case (one row)")
        missing = [c for c in channels if c not in names]
        if missing:
            raise UserError(f"{text}: no column for the run's channel(s) {', '.join(missing)} (it has "
                            f"{', '.join(names)}; the run's channels: {', '.join(channels)})")
        case = cases[0]
        return Case(str(text), tuple(channels), tuple(case.paths[names.index(c)] for c in channels)), case.label
    paths = [Path(p) for p in text.split(",") if p]
    if len(paths) != len(channels):
        raise UserError(f"--input names {len(paths)} file(s); the run takes {len(channels)} channel(s) "
                        f"({', '.join(channels)}), in that order")
    return Case(paths[0].name, tuple(channels), tuple(paths)), None


def written_values(groups) -> np.ndarray:
    """The value written for class k (index k; 0 background): its one raw value that no
    later class holds, else k."""
    values = [0.0]
    for k, group in enumerate(groups):
        later = {v for g in groups[k + 1:] for v in g}
        own = [v for v in group if v not in later]
        values.append(own[0] if len(own) == 1 else float(k + 1))
    return np.array(values)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from genesis_jax import sharding
    from genesis_jax.data.cases import parse_modalities, read_case, unit_channels
    from genesis_jax.data.images import is_picture
    from genesis_jax.data.labelled import label_value_list, map_labels
    from genesis_jax.errors import UserError
    from genesis_jax.scores import dice_of_masks, iou_of_masks
    import nibabel as nib
    try:
        if not 0.0 <= args.overlap < 1.0:
            raise UserError(f"--overlap must be in [0, 1), got {args.overlap}")
        model, task, step = load_model(args.workdir, args.mesh_space)
        channels = run_channels(args.workdir, model)
        case, label_path = input_case(args.input, channels)
        picture = is_picture(case.paths[0])
        check_picture(task, case.paths[0], args.out) if picture else require_nifti(case.paths[0])
        volumes = read_case(case)  # the first channel read once: its header below is nibabel's lazy load
        image = None if picture else nib.load(str(case.paths[0]))
        truth = None
        if args.labels or label_path:
            _, truth_volume = (read_picture_grid if picture else read_nifti_grid)(args.labels or label_path)
            if truth_volume.array.shape != volumes[0].array.shape:
                raise UserError(f"{args.labels or label_path}: shape {truth_volume.array.shape}, the input's is "
                                f"{volumes[0].array.shape}")
            truth = task.truth_masks(map_labels(truth_volume.array, label_value_list(task.groups)))
        mesh = sharding.make_mesh(space=args.mesh_space)
        batch, ways = args.batch or task.cfg.batch_size, sharding.data_size(mesh)
        unit = unit_channels(volumes, parse_modalities(task.cfg.data.modality, channels))[0]
        masks = task.class_masks(task.probabilities(model, unit, mesh, max(ways, batch - batch % ways),
                                                    args.overlap, args.blend))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    classes = task.class_map(masks)
    values = written_values(task.groups)
    dtype = np.uint8 if values.max() < 256 and (values == values.round()).all() and values.min() >= 0 else np.float32
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if image is None:  # a 2D image: its (H, W) map
        out = values[classes[:, :, 0]]
        write_picture(args.out, out)
    else:
        out = values[to_input_grid(classes, image)].astype(dtype)
        nib.save(nib.Nifti1Image(out, image.affine), str(args.out))
    print(f"{args.out}: {out.shape}, classes {task.cfg.data.label_values} written as {values[1:].tolist()} from "
          f"{args.workdir} (step {step}); voxels per class {[int(m) for m in masks.sum(axis=(0, 1, 2))]}")
    if truth is not None:
        names = [str(g[0]) if len(g) == 1 else "+".join(f"{v:g}" for v in g) for g in task.groups]
        print(json.dumps({"dice": dict(zip(names, map(float, dice_of_masks(masks, truth)))),
                          "iou": dict(zip(names, map(float, iou_of_masks(masks, truth))))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
