"""Evaluation scores of the target tasks, on host arrays: Dice and IoU per class for
segmentation, ROC AUC and accuracy for classification (the paper's metrics).

Conventions (stated because they decide the numbers): a class absent from both the
prediction and the truth scores Dice = IoU = 1 (nothing to find, nothing wrongly found)
and is reported as such, not dropped; AUC is the Mann-Whitney probability that a
random positive scores above a random negative, ties counting one half, and is
undefined (an error) without both classes.
"""

from __future__ import annotations

import numpy as np


def _overlaps(predicted: np.ndarray, truth: np.ndarray, n_classes: int):
    """(intersection, predicted count, true count) per class 1..n_classes."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction {predicted.shape} and labels {truth.shape} differ in shape")
    inter, pred_n, true_n = [], [], []
    for k in range(1, n_classes + 1):
        p, t = predicted == k, truth == k
        inter.append(int(np.count_nonzero(p & t)))
        pred_n.append(int(np.count_nonzero(p)))
        true_n.append(int(np.count_nonzero(t)))
    return np.array(inter, float), np.array(pred_n, float), np.array(true_n, float)


def _dice(inter, pred_n, true_n) -> np.ndarray:
    denominator = pred_n + true_n
    return np.where(denominator > 0, 2 * inter / np.maximum(denominator, 1), 1.0)


def _iou(inter, pred_n, true_n) -> np.ndarray:
    union = pred_n + true_n - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def dice_per_class(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """float (n_classes,): 2|P & T| / (|P| + |T|) for labels 1..n_classes (0: background)."""
    return _dice(*_overlaps(predicted, truth, n_classes))


def iou_per_class(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """float (n_classes,): |P & T| / |P | T| for labels 1..n_classes."""
    return _iou(*_overlaps(predicted, truth, n_classes))


def _mask_overlaps(predicted: np.ndarray, truth: np.ndarray):
    """(intersection, predicted count, true count) per class of boolean masks (..., K): for
    classes that may overlap (label maps go through _overlaps, one class at a time, never
    holding K masks of a volume)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction {predicted.shape} and labels {truth.shape} differ in shape")
    axes = tuple(range(predicted.ndim - 1))
    return tuple(np.count_nonzero(m, axis=axes).astype(float) for m in (predicted & truth, predicted, truth))


def dice_of_masks(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """float (K,): Dice per class of boolean masks (..., K), classes that may overlap."""
    return _dice(*_mask_overlaps(predicted, truth))


def iou_of_masks(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """float (K,): IoU per class of boolean masks (..., K)."""
    return _iou(*_mask_overlaps(predicted, truth))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of scores for binary labels (1 positive, 0 negative)."""
    scores, labels = np.asarray(scores, float).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("roc_auc needs labels 0 and 1")
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both classes (got {n_pos} positives, {n_neg} negatives)")
    # Mann-Whitney U from average ranks: ties share their mean rank (count one half).
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size)
    start = 0
    while start < scores.size:
        end = start
        while end + 1 < scores.size and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    predicted, labels = np.asarray(predicted).ravel(), np.asarray(labels).ravel()
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.size} predictions for {labels.size} labels")
    return float(np.mean(predicted == labels))
