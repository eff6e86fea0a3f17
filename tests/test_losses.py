"""Segmentation losses against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from genesis_jax.losses import bce_loss, one_hot_classes, segmentation_loss, soft_dice_loss


def test_one_hot_leaves_background_out():
    np.testing.assert_array_equal(one_hot_classes(jnp.array([0, 1, 2]), 2), [[0, 0], [1, 0], [0, 1]])


def test_soft_dice_by_hand():
    probs = jnp.array([[0.5, 1.0], [0.5, 0.0], [1.0, 0.0]])   # 3 voxels, 2 channels
    targets = jnp.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    # channel 0: 2 * (0.5 + 1) + 1 = 4 over 2 + 2 + 1 = 5 -> 0.8; channel 1: (2 + 1) / (1 + 1 + 1) = 1
    assert float(soft_dice_loss(probs, targets)) == pytest.approx(1 - (0.8 + 1.0) / 2)
    assert float(soft_dice_loss(targets, targets)) == pytest.approx(0.0)


def test_bce_by_hand_and_the_sum():
    probs, targets = jnp.array([[0.8], [0.3]]), jnp.array([[1.0], [0.0]])
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert float(bce_loss(probs, targets)) == pytest.approx(expected, rel=1e-6)
    assert float(segmentation_loss("dice_bce", probs, targets)) == pytest.approx(
        float(soft_dice_loss(probs, targets)) + expected, rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        segmentation_loss("focal", probs, targets)
