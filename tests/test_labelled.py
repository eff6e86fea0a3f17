"""Labelled volumes and foreground-biased patches for segmentation fine-tuning."""

from pathlib import Path

import numpy as np
import pytest

from genesis_jax.data.labelled import PatchSampler, map_labels, read_pair
from genesis_jax.data.volumes import VolumeError
from genesis_jax.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_nifti(path, array, spacing=(1.0, 1.0, 1.0)):
    import nibabel as nib
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def test_label_values_become_classes_in_order():
    raw = np.array([0, 5, 6, 7, 5, 6], float)
    np.testing.assert_array_equal(map_labels(raw, [6, 5]), [0, 2, 1, 0, 2, 1])
    with pytest.raises(ValueError, match="distinct"):
        map_labels(raw, [5, 5])


def test_a_label_volume_on_another_grid_is_refused(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", np.zeros((8, 8, 8), np.float32))
    write_nifti(tmp_path / "seg.nii.gz", np.ones((8, 8, 6), np.float32))
    with pytest.raises(VolumeError, match=r"seg.nii.gz.*does not match the image"):
        read_pair(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", [1])
    write_nifti(tmp_path / "seg2.nii.gz", np.ones((8, 8, 8), np.float32), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match="does not match the image"):
        read_pair(tmp_path / "ct.nii.gz", tmp_path / "seg2.nii.gz", [1])
    write_nifti(tmp_path / "seg3.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(VolumeError, match="no voxel has any of the label values"):
        read_pair(tmp_path / "ct.nii.gz", tmp_path / "seg3.nii.gz", [1])


def test_the_values_present_are_listed_in_full_or_say_how_many_more(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", np.zeros((8, 8, 8), np.float32))
    few = np.zeros((8, 8, 8), np.float32)
    few[0, 0, :3] = [2, 3, 4.5]
    write_nifti(tmp_path / "few.nii.gz", few)
    with pytest.raises(VolumeError, match=r"\(values present: 0, 2, 3, 4.5\)$"):
        read_pair(tmp_path / "ct.nii.gz", tmp_path / "few.nii.gz", [12])
    many = np.zeros((8, 8, 8), np.float32)
    many.flat[:12] = [*range(10), 50, 117]  # an abdomen atlas holds labels up to 117
    write_nifti(tmp_path / "many.nii.gz", many)
    with pytest.raises(VolumeError, match=r"\(values present: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more, up to 117\)$"):
        read_pair(tmp_path / "ct.nii.gz", tmp_path / "many.nii.gz", [12])


def small_structure():
    image = np.random.default_rng(0).random((40, 40, 20), dtype=np.float32)
    classes = np.zeros((40, 40, 20), np.int8)
    classes[30:33, 5:8, 2:4] = 1   # 18 voxels of 32,000: a random 16^3 patch rarely holds it
    return image, classes


def test_foreground_bias_and_determinism():
    image, classes = small_structure()
    biased = PatchSampler([(image, classes)], (16, 16, 8), foreground_ratio=1.0, seed=3)
    batch = biased.batch(7, 32)
    assert batch.shape == (32, 16, 16, 8, 2) and batch.dtype == np.float32
    assert all((patch[..., 1] > 0).any() for patch in batch)            # every patch holds foreground
    np.testing.assert_array_equal(batch, biased.batch(7, 32))          # step 7 is always the same batch
    assert not np.array_equal(batch, biased.batch(8, 32))
    uniform = PatchSampler([(image, classes)], (16, 16, 8), foreground_ratio=0.0, seed=3).batch(7, 400)
    share = np.mean([(patch[..., 1] > 0).any() for patch in uniform])
    # corners x 0..24, y 0..24, z 0..12 uniform; the patch overlaps x 30..32 for 10 of 25,
    # y 5..7 for 8 of 25, z 2..3 for 4 of 13: P = 0.039; 400 patches, 4 sigma = 0.039
    assert 0.01 < share < 0.08, share
    # the image channel is the image at the same place as the labels
    patch = batch[0]
    hits = np.argwhere(patch[..., 1] > 0)[0]
    assert patch[tuple(hits)][0] in image[classes > 0]


def test_volumes_smaller_than_the_patch_are_padded():
    image, classes = np.ones((10, 12, 6), np.float32), np.ones((10, 12, 6), np.int8)
    batch = PatchSampler([(image, classes)], (16, 16, 8), seed=0).batch(0, 2)
    assert batch.shape == (2, 16, 16, 8, 2)
    assert batch[..., 1].sum() == 2 * 10 * 12 * 6   # the labels are all there once, the pad is background
    assert (batch[..., 0] == 1.0).all()             # edge padding of the image


@pytest.mark.skipif(not (SHARED / "chest_ct_cropped_aorta.nii.gz").exists(), reason="../shared/data not present")
def test_the_shared_aorta_task_reads():
    image, classes = read_pair(SHARED / "chest_ct_cropped.nii.gz", SHARED / "chest_ct_cropped_aorta.nii.gz", [1])
    assert image.shape == classes.shape and 0 < classes.mean() < 0.2
    assert image.min() >= 0 and image.max() <= 1


def test_label_groups_become_overlapping_classes_with_dice_per_class():
    """BraTS-style groups 1+2+4 (whole), 1+4 (core), 4 (enhancing) on a label map of raw
    values: the targets are nested masks; one value per class keeps the one-hot classes;
    Dice per class of masks counts each class on its own."""
    from genesis_jax.data.labelled import class_membership, label_value_list
    from genesis_jax.scores import dice_of_masks
    from genesis_jax.tasks import parse_label_values
    groups = parse_label_values("1+2+4,1+4,4")
    assert groups == [(1.0, 2.0, 4.0), (1.0, 4.0), (4.0,)]
    raw = np.array([0, 1, 2, 4, 3, 4])
    index = map_labels(raw, label_value_list(groups))
    targets = class_membership(groups)[index]
    np.testing.assert_array_equal(targets, [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(class_membership(parse_label_values("6,5")), [[0, 0], [1, 0], [0, 1]])
    predicted = targets.astype(bool).copy()
    predicted[2, 0] = False   # whole tumour misses one of its 4 voxels: Dice 2*3/(3+4)
    predicted[0, 2] = True    # enhancing gains one: 2*2/(3+2)
    np.testing.assert_allclose(dice_of_masks(predicted, targets > 0), [6 / 7, 1.0, 4 / 5])
    with pytest.raises(UserError, match="values of one class joined by"):
        parse_label_values("1+x")
    with pytest.raises(UserError, match="distinct"):
        parse_label_values("1+1,2")


def test_predict_writes_nested_groups_back_as_their_own_raw_values():
    """The map shows the last class above 0.5; class k is written as the raw value only it
    holds among later classes: whole/core/enhancing -> 2, 1, 4 (the BraTS labels)."""
    from genesis_jax.configs.segmentation import get_config
    from genesis_jax.predict import written_values
    from genesis_jax.tasks import SegmentationTask, parse_label_values
    np.testing.assert_array_equal(written_values(parse_label_values("1+2+4,1+4,4")), [0, 2, 1, 4])
    np.testing.assert_array_equal(written_values(parse_label_values("5,6")), [0, 5, 6])
    np.testing.assert_array_equal(written_values(parse_label_values("1+2,1+2+3")), [0, 1, 2])  # none or several: k
    cfg = get_config()
    cfg.data.label_values = "1+2+4,1+4,4"
    task = SegmentationTask(cfg)
    probs = np.array([[0.9, 0.2, 0.1], [0.9, 0.8, 0.6], [0.2, 0.1, 0.1], [0.9, 0.7, 0.3]])
    masks = task.class_masks(probs)
    np.testing.assert_array_equal(task.class_map(masks), [1, 3, 0, 2])
    cfg.data.label_values = "5,6"
    np.testing.assert_array_equal(SegmentationTask(cfg).class_masks(probs[:, :2]).sum(-1), [1, 1, 0, 1])
