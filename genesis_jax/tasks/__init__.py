"""The tasks the one training loop runs (the protocol: tasks/base.py), and the one place
that maps `config.task` to its class. Adding a task: a module here and one line in TASKS."""

from __future__ import annotations

from genesis_jax.errors import UserError
from genesis_jax.tasks.classification import ClassificationTask
from genesis_jax.tasks.pretrain import PretrainTask, restoration_loss, restoration_mse
from genesis_jax.tasks.segmentation import SegmentationTask, parse_label_values

TASKS = {task.name: task for task in (PretrainTask, SegmentationTask, ClassificationTask)}


def task_for(cfg, platform: str | None = None):
    """The task a config names (config.task)."""
    name = cfg.get("task", "pretrain")
    if name not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name](cfg, platform)


__all__ = ["TASKS", "task_for", "PretrainTask", "SegmentationTask", "ClassificationTask",
           "restoration_loss", "restoration_mse", "parse_label_values"]
