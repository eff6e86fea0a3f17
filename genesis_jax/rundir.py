"""A run directory, in one place: what it holds and how a run's model is loaded from it.

    RUN/config.json               the resolved config (read_run_config reads it back)
    RUN/run_info.json             versions, devices, mesh, seed, task, data and its sha256
    RUN/checkpoints/<step>/       Orbax checkpoints (checkpoint.Checkpointer), best one marked
    RUN/tensorboard/, RUN/images/ logs and validation pictures (metrics.MetricWriter)
    RUN/genesis_unet3d_best.pt    the best U-Net as a PyTorch state_dict (export_pytorch); a 2D
                                  model's is genesis_unet2d_best.pt or genesis_resnet18_unet_best.pt

Used by the loop (trainer.py: create, resume, record, export), by fine-tuning (a run
directory or a .pt as the init source: load_source, new_model), predict and restore.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import jax
from flax import nnx

from genesis_jax import sharding
from genesis_jax.checkpoint import Checkpointer, abstract_like
from genesis_jax.errors import UserError
from genesis_jax.optim import make_optimizer
from genesis_jax.processes import wait_for_all_processes
from genesis_jax.step import init_train_state, model_from_state
from genesis_jax.tasks import TASKS, task_for
from genesis_jax.transfer import PARTS, transfer_weights

CONFIG_FILE, INFO_FILE, PYTORCH_EXPORT = "config.json", "run_info.json", "genesis_unet3d_best.pt"


def checkpoint_dir(workdir) -> Path:
    return Path(workdir) / "checkpoints"


def has_checkpoints(workdir) -> bool:
    """Whether a run would resume there (a checkpoint directory named by its step)."""
    return any(p.name.isdigit() for p in checkpoint_dir(workdir).glob("*"))


@contextlib.contextmanager
def new_workdir(workdir: Path):
    """The run directory, created and shown writable before any work (UserError naming
    it); the directories this call created, parents included, are removed again if the
    block fails while they are empty (a run that never started leaves nothing behind)."""
    created = [p for p in (workdir, *workdir.parents) if not p.exists()]  # deepest first
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=workdir).close()
    except OSError as e:
        raise UserError(f"{workdir}: cannot write the run directory there ({e.strerror})") from None
    try:
        yield
    except BaseException:
        # Best effort, never in the way of the error itself: another process of the run
        # may have removed a directory, or written into one, in the meantime.
        with contextlib.suppress(OSError):
            for directory in created:
                if any(directory.iterdir()):
                    break
                directory.rmdir()
        raise


def write_run_files(workdir, cfg, info: dict) -> None:
    """config.json (the resolved config) and run_info.json (info)."""
    (Path(workdir) / CONFIG_FILE).write_text(cfg.to_json_best_effort(indent=2))
    (Path(workdir) / INFO_FILE).write_text(json.dumps(info, indent=2))


def run_defaults(task: str, recorded: dict):
    """The defaults a recorded config is read over: its task's, or the task's 2D config
    (Models Genesis 2D) when its data shape has two sizes."""
    from genesis_jax.configs import base
    data = recorded.get("data", {})
    shape = data.get("cube_shape", data.get("patch_shape", ()))
    two_d = {"pretrain": base.genesis_2d_base, "segmentation": base.segmentation_2d_base,
             "classification": base.classification_2d_base}
    return two_d[task]() if len(shape) == 2 and task in two_d else TASKS[task].default_config()


def read_run_config(workdir):
    """The config a run directory was trained with (its config.json over its task's
    defaults, so tuples stay tuples); UserError if the directory holds no run."""
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{workdir}: not a genesis-jax run directory (no {CONFIG_FILE})")
    try:
        recorded = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    task = recorded.get("task", "pretrain")
    if task not in TASKS:
        raise UserError(f"{path}: unknown task {task!r}")
    cfg = run_defaults(task, recorded)

    def overlay(target, values, prefix):
        for key, value in values.items():
            if key not in target:
                raise UserError(f"{path}: unknown config field {prefix}{key} (written by another version?)")
            if isinstance(value, dict):
                overlay(target[key], value, f"{prefix}{key}.")
            else:
                target[key] = tuple(value) if isinstance(target[key], tuple) else value

    overlay(cfg, recorded, "")
    return cfg


def task_optimizer(cfg, task, steps_per_epoch: int):
    """The run's optax transformation; the task names its pre-trained modules (fine-tuning)."""
    return make_optimizer(cfg.optimizer, cfg.schedule, steps_per_epoch, cfg.total_steps, task.pretrained_modules())


def check_width(cfg, source: str, width: int) -> None:
    """The init source's width must be the config's: it fixes every array's shape."""
    if width != cfg.model.width:
        raise UserError(f"init {source} has model.width={width}, the config says model.width={cfg.model.width}: "
                        f"pass --config.model.width={width}")


def new_model(task, rngs, initialize: bool = True):
    """The task's model; initialize: with the pre-trained weights of the task's init
    source copied into its `part` (a run directory or a .pt; nothing from scratch), and
    one line saying what was copied and what is new."""
    model = task.build_model(rngs)
    source = task.init_source() if initialize else None
    if source is not None:
        if Path(source).is_dir():  # from its config.json, before any weights are read
            check_width(task.cfg, source, read_run_config(source).model.width)
        weights, described, source_cfg = load_source(source)
        if source_cfg is None:  # a .pt: its width is known once it is read
            check_width(task.cfg, source, weights.width)
        how = task.cfg.get("init_channels", "spread")
        copied = transfer_weights(model, weights, task.part, described, how)
        modules = list(dict.fromkeys(str(path[0]) for path, _ in nnx.to_flat_state(nnx.state(model))))
        new = [m for m in modules if m not in PARTS[task.part]]
        channels = getattr(weights, "in_channels", 1), task.cfg.model.in_channels
        spread = (f"; its one input channel {'spread over' if how == 'spread' else f'copied to channel {how} of'} "
                  f"the model's {channels[1]}") if channels[0] != channels[1] else ""
        if jax.process_index() == 0:
            print(f"initialised from {described}: {len(copied)} arrays of {', '.join(PARTS[task.part])} copied"
                  f"{spread}; new: {', '.join(new) or 'none'}", flush=True)
    return model


def build_state(task, tx, seed: int, mesh, initialize: bool = True):
    """(graphdef, replicated TrainState): the task's model and the optimizer state.
    initialize=False: skip copying pre-trained weights in (a checkpoint replaces them)."""
    graphdef, state = init_train_state(new_model(task, nnx.Rngs(seed), initialize=initialize), tx)
    wait_for_all_processes("model built")  # the transfer below is the run's first collective
    return graphdef, sharding.replicate(state, mesh)


def load_checkpoint(cfg, workdir, best: bool = False, task=None):
    """(model, meta) from a run directory's latest (or best) checkpoint, on this host's devices."""
    task = task or task_for(cfg)
    mesh = sharding.make_mesh()
    graphdef, state = build_state(task, task_optimizer(cfg, task, 1), 0, mesh, initialize=False)
    checkpointer = Checkpointer(checkpoint_dir(workdir), keep=cfg.keep_checkpoints)
    try:
        step = checkpointer.best_step() if best else (checkpointer.steps() or [None])[-1]
        if step is None:
            raise UserError(f"{workdir}: no checkpoint found")
        restored, meta = checkpointer.restore(step, abstract_like(state)), checkpointer.read_meta(step)
    finally:
        checkpointer.close()
    return model_from_state(graphdef, restored), meta


def load_source(init):
    """(UNet3D holding the weights of a genesis-jax run directory's best checkpoint or of an
    official-layout PyTorch .pt/.pth, a one-line description of where from, the run's
    config for a run directory else None)."""
    path = Path(init)
    if path.is_dir():
        cfg = read_run_config(path)
        model, meta = load_checkpoint(cfg, path, best=True)
        return model, f"{path} (best checkpoint, step {meta.get('step', '?')}, width {cfg.model.width})", cfg
    if path.is_file() and path.suffix in (".pt", ".pth"):
        from genesis_jax.models import load_pytorch_checkpoint
        try:
            model = load_pytorch_checkpoint(path)
        except ValueError as e:
            raise UserError(str(e)) from None
        return model, f"{path} (PyTorch {type(model).__name__}, width {model.width})", None
    raise UserError(f"init {init}: neither a genesis-jax run directory nor a .pt/.pth file")


def pytorch_export_name(model) -> str:
    """genesis_unet3d_best.pt, or for the 2D models genesis_unet2d_best.pt and
    genesis_resnet18_unet_best.pt."""
    from genesis_jax.models.resnet_unet import ResNet18UNet
    if isinstance(model, ResNet18UNet):
        return "genesis_resnet18_unet_best.pt"
    return PYTORCH_EXPORT if getattr(model, "dims", 3) == 3 else "genesis_unet2d_best.pt"


def export_best(workdir, checkpointer: Checkpointer, graphdef, state) -> str | None:
    """Write the best checkpoint's weights (else state's) as a PyTorch checkpoint in the
    run directory; skipped (with a note) without torch."""
    try:
        from genesis_jax.models import save_pytorch_checkpoint
        import torch  # noqa: F401
    except ImportError:
        print("note: torch is not installed; skipping the PyTorch export "
              "(pip install torch, or pip install -e '.[torch]' in a clone)")
        return None
    best = checkpointer.best_step()
    if best is not None:
        state = checkpointer.restore(best, abstract_like(state))
    model = model_from_state(graphdef, state)
    path = Path(workdir) / pytorch_export_name(model)
    save_pytorch_checkpoint(model, path)
    return str(path)
