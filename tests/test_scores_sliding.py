"""Target-task scores against hand-computed values, and sliding-window inference."""

import numpy as np
import pytest

from genesis_jax.scores import accuracy, dice_per_class, iou_per_class, roc_auc
from genesis_jax.sliding import blend_weights, pad_to_patch, sliding_window, window_starts


def test_dice_and_iou_by_hand():
    truth = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    predicted = np.array([1, 1, 1, 0, 2, 0, 0, 0])
    # class 1: P = {0,1,2}, T = {1,2,3}, P&T = {1,2}: Dice 2*2/(3+3), IoU 2/4
    # class 2: P = {4}, T = {4,5}: Dice 2*1/(1+2), IoU 1/2; class 3 absent from both: 1
    np.testing.assert_allclose(dice_per_class(predicted, truth, 3), [4 / 6, 2 / 3, 1.0])
    np.testing.assert_allclose(iou_per_class(predicted, truth, 3), [0.5, 0.5, 1.0])
    assert dice_per_class(np.zeros(4), np.array([0, 1, 0, 0]), 1)[0] == 0.0  # missed entirely
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_class(np.zeros(3), np.zeros(4), 1)


def test_auc_by_hand_with_ties_and_accuracy():
    # positives 0.8, 0.4, 0.35; negatives 0.7, 0.4, 0.1. Pairs (pos > neg): 0.8 beats 3,
    # 0.4 beats 0.1 and ties 0.4 (one half), 0.35 beats 0.1: (3 + 1.5 + 1) / 9.
    scores = [0.8, 0.7, 0.4, 0.4, 0.35, 0.1]
    labels = [1, 0, 1, 0, 1, 0]
    assert roc_auc(scores, labels) == pytest.approx(5.5 / 9)
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0 and roc_auc([0.9, 0.1], [0, 1]) == 0.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_windows_cover_every_voxel_and_end_at_the_edge():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 6, 7]
    assert window_starts(4, 4, 0.5) == [0]
    assert window_starts(9, 4, 0.0) == [0, 4, 5]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(9, 4, 1.0)
    w = blend_weights((8, 8, 4), "gaussian")
    assert w.min() > 0 and w.max() == 1.0 and w[3:5, 3:5, 1:3].min() > w[0, 0, 0]


@pytest.mark.parametrize("blend", ["gaussian", "mean"])
@pytest.mark.parametrize("shape", [(19, 13, 9), (5, 20, 3)])  # odd sizes; smaller than the patch
def test_a_model_that_returns_its_input_reconstructs_the_volume_exactly(blend, shape):
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    calls = []

    def identity(batch):
        calls.append(batch.shape)
        return batch

    out = sliding_window(identity, volume, (8, 8, 4), overlap=0.5, blend=blend, batch_size=3)
    assert out.shape == (*shape, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], volume)
    assert set(calls) == {(3, 8, 8, 4, 1)}  # one compiled shape, the last batch filled


def test_blending_weights_windows_as_stated():
    """Each window outputs its own number: a voxel's result is the weighted mean of the
    numbers of the windows covering it (mean: plain average)."""
    volume = np.zeros((12, 8, 4), np.float32)
    seen = []

    def window_id(batch):
        out = np.zeros(batch.shape)
        for i in range(batch.shape[0]):
            seen.append(len(seen))
            out[i] = len(seen) - 1
        return out

    out = sliding_window(window_id, volume, (8, 8, 4), overlap=0.5, blend="mean", batch_size=1)[..., 0]
    # windows along x start at 0, 4 (ids 0, 1): x < 4 only window 0, 4..7 both, 8.. window 1
    np.testing.assert_allclose(out[:4], 0.0)
    np.testing.assert_allclose(out[4:8], 0.5)
    np.testing.assert_allclose(out[8:], 1.0)


def test_padding_is_cropped_back():
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    padded, crop = pad_to_patch(volume, (4, 4, 4))
    assert padded.shape == (4, 4, 4)
    np.testing.assert_array_equal(padded[crop], volume)


def test_windows_are_split_over_the_mesh():
    """With put = sharding.global_batch, each batch of windows arrives split over the 8
    simulated devices, and the result equals the single-device one."""
    import jax

    from genesis_jax import sharding

    mesh = sharding.make_mesh()
    assert mesh.size == 8
    shards = []

    @jax.jit
    def model(batch):
        return jax.numpy.concatenate([batch, batch ** 2], axis=-1)

    def on_mesh(batch):
        shards.append(len(batch.addressable_shards) == 8 and batch.addressable_shards[0].data.shape[0] == 1)
        return model(batch)

    volume = np.random.default_rng(1).random((20, 12, 6), dtype=np.float32)
    split = sliding_window(on_mesh, volume, (8, 8, 4), batch_size=8, put=lambda b: sharding.global_batch(b, mesh))
    single = sliding_window(lambda b: model(b), volume, (8, 8, 4), batch_size=8)
    assert shards and all(shards)
    np.testing.assert_allclose(split, single, rtol=1e-6)
    np.testing.assert_allclose(split[..., 1], volume ** 2, rtol=1e-5)
