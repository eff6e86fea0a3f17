"""`python -m genesis_jax.predict`: segment a whole volume with a fine-tuned model.

    python -m genesis_jax.predict --workdir=RUN --input=CT.nii.gz --out=PRED.nii.gz
        [--labels=GT.nii.gz] [--overlap=0.5] [--blend=gaussian|mean] [--batch=N]

Loads the run's best checkpoint, windows the input as in training (CT window or MR
percentiles), runs sliding-window inference over the whole volume on the devices
(fixed-size batches of patches split over the mesh; genesis_jax/sliding.py), and
writes the label map as NIfTI with the input's shape, affine and voxel order; its
values are the run's raw label values (data.label_values), 0 elsewhere. A voxel gets
the most probable class where that probability exceeds 0.5. With --labels it also
prints Dice and IoU per class as one JSON line. Any volume size works (padded, then
cropped back). Bad input: one line, exit status 1, nothing written.
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
    parser.add_argument("--input", required=True, help="the volume to segment (NIfTI)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the label map (.nii.gz)")
    parser.add_argument("--labels", help="ground-truth label volume on the input's grid: print Dice per class")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--blend", choices=("gaussian", "mean"), default="gaussian")
    parser.add_argument("--batch", type=int, default=0, help="windows per device call (default: the run's batch)")
    return parser.parse_args(argv)


def load_model(workdir):
    """(model in eval mode, SegmentationTask, step of the checkpoint)."""
    from genesis_jax.errors import UserError
    from genesis_jax.tasks import SegmentationTask
    from genesis_jax.rundir import load_checkpoint, read_run_config
    cfg = read_run_config(workdir)
    if cfg.task != "segmentation":
        raise UserError(f"{workdir}: a {cfg.task} run; predict needs a segmentation fine-tuning run")
    task = SegmentationTask(cfg)
    model, meta = load_checkpoint(cfg, workdir, best=True, task=task)
    model.eval()
    return model, task, meta.get("step")


def read_nifti_grid(path):
    """(nibabel image, its array reordered as genesis_jax reads volumes) for a NIfTI input."""
    from genesis_jax.data.volumes import VolumeError, read_volume
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        raise VolumeError(path, "predict writes NIfTI on the input's grid, so it takes NIfTI input "
                                "(convert MHD/DICOM first, e.g. with SimpleITK)")
    import nibabel as nib
    return nib.load(str(path)), read_volume(path)


def to_input_grid(labels_lps: np.ndarray, image):
    """The inverse of data/volumes.py's NIfTI read (closest canonical RAS, then X and Y
    flipped to LPS): labels in the input file's own voxel order."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform
    canonical = nib.as_closest_canonical(image)
    ras = labels_lps[::-1, ::-1, :]
    return apply_orientation(ras, ornt_transform(io_orientation(canonical.affine), io_orientation(image.affine)))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from genesis_jax import sharding
    from genesis_jax.data.labelled import map_labels
    from genesis_jax.data.volumes import to_unit_range
    from genesis_jax.errors import UserError
    from genesis_jax.scores import dice_per_class, iou_per_class
    from genesis_jax.tasks import parse_label_values
    try:
        if not 0.0 <= args.overlap < 1.0:
            raise UserError(f"--overlap must be in [0, 1), got {args.overlap}")
        model, task, step = load_model(args.workdir)
        image, volume = read_nifti_grid(args.input)
        truth = None
        if args.labels:
            truth_image, truth_volume = read_nifti_grid(args.labels)
            if truth_volume.array.shape != volume.array.shape:
                raise UserError(f"{args.labels}: shape {truth_volume.array.shape}, the input's is {volume.array.shape}")
            truth = map_labels(truth_volume.array, parse_label_values(task.cfg.data.label_values))
        mesh = sharding.make_mesh()
        batch = args.batch or task.cfg.batch_size
        classes = task.segment(model, to_unit_range(volume.array, task.cfg.data.modality)[0], mesh,
                               max(mesh.size, batch - batch % mesh.size), args.overlap, args.blend)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import nibabel as nib
    values = np.array([0.0, *parse_label_values(task.cfg.data.label_values)])
    dtype = np.uint8 if values.max() < 256 and (values == values.round()).all() and values.min() >= 0 else np.float32
    out = values[to_input_grid(classes, image)].astype(dtype)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(out, image.affine), str(args.out))
    print(f"{args.out}: {out.shape}, classes {values[1:].tolist()} from {args.workdir} (step {step}); "
          f"voxels per class {[int((classes == k).sum()) for k in range(1, len(values))]}")
    if truth is not None:
        n = len(values) - 1
        print(json.dumps({"dice": {str(values[k]): float(d) for k, d in enumerate(dice_per_class(classes, truth, n), 1)},
                          "iou": {str(values[k]): float(d) for k, d in enumerate(iou_per_class(classes, truth, n), 1)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
