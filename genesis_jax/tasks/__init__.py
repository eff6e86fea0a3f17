"""The tasks the one training loop runs (the protocol: tasks/base.py), and the one place
that maps `config.task` to its class. Adding a task: a module here and one line in TASKS."""

from __future__ import annotations

from genesis_jax.errors import UserError
from genesis_jax.tasks.classification import ClassificationTask
from genesis_jax.tasks.pretrain import PretrainTask, restoration_loss, restoration_mse
from genesis_jax.tasks.segmentation import SegmentationTask, parse_label_values

TASKS = {task.name: task for task in (PretrainTask, SegmentationTask, ClassificationTask)}


def task_class(name: str, where: str = "task"):
    """The class of the task called `name`; UserError (prefixed by `where`) for another name."""
    if name not in TASKS:
        raise UserError(f"{where} must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def task_for(cfg, platform: str | None = None):
    """The task a config names (config.task)."""
    return task_class(cfg.get("task", "pretrain"))(cfg, platform)


__all__ = ["TASKS", "task_class", "task_for", "PretrainTask", "SegmentationTask", "ClassificationTask",
           "restoration_loss", "restoration_mse", "parse_label_values"]
