"""A tiny pre-training run in its own process, for the kill tests (test_kills.py).

python tests/reliability/train_child.py WORKDIR [KEY=VALUE ...]

The tiny config of tests/runs.py with checkpoints at every step and none deleted;
KEY=VALUE overrides top-level fields (ints). At the end one line: RESULT {json} with
the summary's start step and per-step train and validation losses (floats of the
float32 values, so equal means bitwise equal).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runs import tiny_config  # noqa: E402

from genesis_jax.trainer import train  # noqa: E402

KILL_TRIAL_CONFIG = dict(total_steps=8, batch_size=2, num_devices=2, steps_per_epoch=4, eval_every=4, checkpoint_every=1,
                         keep_checkpoints=100, log_every=1)


def main() -> None:
    workdir, overrides = sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:])
    cfg = tiny_config(**{**KILL_TRIAL_CONFIG, **{k: int(v) for k, v in overrides.items()}})
    cfg.data.val_cubes = 2
    summary = train(cfg, workdir)
    print("RESULT " + json.dumps({key: summary[key] for key in ("start_step", "end_step", "train_losses",
                                                                 "val_losses")}), flush=True)


if __name__ == "__main__":
    main()
