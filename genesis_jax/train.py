"""python -m genesis_jax.train [--config=demo|genesis_chest_ct|multi_device|PATH] [--workdir=DIR]
[--config.FIELD=VALUE ...] [--distributed] [--print_config]
python -m genesis_jax.train --dry_run [--topology=v5e:2x2] [--device_memory_gb=GB] [--json=PATH] [config flags]

Pre-trains the Genesis U-Net (self-supervised restoration of corrupted cubes). With no
flags: the demo config on the embedded chest CT sample, in a new directory under ./runs/
that is printed first. Running the same command with the same --workdir resumes from
its latest checkpoint. SIGTERM or Ctrl-C saves a checkpoint at the end of the step and
exits (a second Ctrl-C aborts at once).
--dry_run compiles the configured step without data or training and reports per-device
memory, FLOPs, collectives and the largest batch that fits (genesis_jax/dryrun.py).
Compiled programs are cached in ~/.cache/genesis_jax/xla (GENESIS_JAX_CACHE=DIR to move
it, =off to disable; JAX_COMPILATION_CACHE_DIR, if set, wins).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from genesis_jax.configs import NAMES, config_path



def _define_flags(default_config: str = "demo"):
    """Defined on first use, not at import: ml_collections reads the --config.* overrides
    from sys.argv when the flag is defined, and a bad one must become a clean error."""
    if "config" in flags.FLAGS:
        return
    config_flags.DEFINE_config_file("config", config_path(default_config), "training config: a name or a path",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (default: runs/<config>-<time>); the same one again resumes")
    flags.DEFINE_bool("print_config", False, "print every config field (with your overrides) as name = value "
                      "# meaning, then exit")
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-process GPU/TPU runs); "
                      "on TPU VMs and under SLURM it finds its peers itself, elsewhere pass the three flags below")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed)")
    flags.DEFINE_integer("num_processes", None, "number of processes (with --distributed)")
    flags.DEFINE_integer("process_id", None, "this process's index (with --distributed)")
    flags.DEFINE_bool("dry_run", False, "compile the configured step for the configured batch and mesh, print "
                      "per-device memory, FLOPs, collectives and the largest batch that fits; no data, no training")
    flags.DEFINE_string("topology", None, "with --dry_run: compile ahead of time for this TPU slice (v5e:2x2, "
                        "v5p:2x2x1, v4:2x2x1, ...) on a machine without TPUs; needs libtpu")
    flags.DEFINE_float("device_memory_gb", None, "with --dry_run: memory per device in GiB for the largest-batch "
                       "fit (default: the device's own where known)")
    flags.DEFINE_string("json", None, "with --dry_run: also write the report to this JSON file")
    flags.DEFINE_integer("fit_compiles", None, "with --dry_run: compiles spent refining the largest batch after the "
                         "first two (default 4; 0: the linear fit's candidate is not checked)")


_DRY_RUN_FLAGS = ("topology", "device_memory_gb", "json", "fit_compiles")
_HELP = ("-h", "--help", "--helpshort", "--helpfull", "-help")


def help_text(program: str, doc: str, default_config: str) -> str:
    """--help: usage, the named configs, every flag, and how to see every config field."""
    from genesis_jax.configs import summary
    _define_flags(default_config)
    names = [n for n in NAMES if (n in ("segmentation", "classification")) == (program == "genesis_jax.finetune")]
    lines = [doc.strip(), "", "configs (--config=NAME, or the path of a config file):"]
    lines += [f"  {n:<18s}{summary(n)}{' (default)' if n == default_config else ''}" for n in names]
    lines += ["", "flags:"]
    for name in ("workdir", "print_config", "distributed", "coordinator_address", "num_processes", "process_id",
                 "dry_run", *_DRY_RUN_FLAGS):
        lines.append(f"  --{name:<22s}{flags.FLAGS[name].help}")
    lines += [f"  --config.FIELD=VALUE    override one config field, e.g. --config.batch_size=16; "
              f"every field, its default and meaning: python -m {program} --config=NAME --print_config",
              "  -h, --help              this text"]
    return "\n".join(lines)


def _resolve_config_names(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--config="):
            arg = "--config=" + config_path(arg.split("=", 1)[1])
        out.append(arg)
    return out


def last_override_wins(argv: list[str]) -> list[str]:
    """A field overridden twice takes the last value, as any flag does (ml_collections
    joins repeated tuple overrides: cube_shape (16,16,16) then (32,32,16) became a
    6-tuple)."""
    def field(arg: str) -> str | None:
        return arg.split("=", 1)[0] if arg.startswith("--config.") and "=" in arg else None

    last = {field(arg): index for index, arg in enumerate(argv) if field(arg)}
    return [arg for index, arg in enumerate(argv) if not field(arg) or last[field(arg)] == index]


def unknown_field_message(error: Exception, argv: list[str]) -> str:
    """One line from ml_collections' error for an override of a missing field, whose text
    is a quoted name, maybe followed by a 'Did you mean' line."""
    while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(...))
        error = error.args[0]
    lines = str(error.args[0] if error.args else error).strip().splitlines() or ["?"]
    locked = re.match(r'Key "([^"]+)" does not exist', lines[0])
    name = locked.group(1) if locked else lines[0].strip("'\"")
    flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.") and
                 a.split("=", 1)[0].rsplit(".", 1)[-1] == name), None)
    where = f" (in {flag})" if flag else ""
    hint = re.search(r'Did you mean "([^"]+)"', " ".join(lines[1:]))
    return (f"unknown config field {name!r}{where}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")
            + " (--print_config lists every field)")


def parse(argv: list[str], default_config: str = "demo", program: str = "genesis_jax.train", doc: str = __doc__):
    """(config, workdir, distributed, dry_run, print_config) from argv; one clear line and
    exit 2 on a bad flag; --help prints help_text and exits 0."""
    if any(arg in _HELP for arg in argv[1:]):
        print(help_text(program, doc, default_config))
        sys.exit(0)
    argv = last_override_wins(_resolve_config_names(argv))
    for arg in argv:
        if arg.startswith("--config=") and not Path(arg.split("=", 1)[1].split(":")[0]).is_file():
            print(f"error: bad flag: no config {arg.split('=', 1)[1]!r} (names: {', '.join(NAMES)}, "
                  f"or a path to a config file)", file=sys.stderr)
            sys.exit(2)
    sys.argv[:] = argv
    try:
        _define_flags(default_config)
        flags.FLAGS(argv)
        config = flags.FLAGS.config
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config lacks
        print(f"error: {unknown_field_message(e, argv)}", file=sys.stderr)
        sys.exit(2)
    except (flags.Error, OSError, TypeError, ValueError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        print(f"error: bad flag: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
        sys.exit(2)
    config_file = flags.FLAGS["config"].config_filename.split(":")[0]
    workdir = flags.FLAGS.workdir or str(Path("runs") / f"{Path(config_file).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    distributed = None
    if flags.FLAGS.distributed:
        distributed = {k: flags.FLAGS[k].value for k in ("coordinator_address", "num_processes", "process_id")
                       if flags.FLAGS[k].value is not None}
    dry_run = None
    if flags.FLAGS.dry_run:
        dry_run = {k: flags.FLAGS[k].value for k in _DRY_RUN_FLAGS}
    elif any(flags.FLAGS[k].value is not None for k in _DRY_RUN_FLAGS):
        print(f"error: bad flag: {', '.join('--' + k for k in _DRY_RUN_FLAGS)} go with --dry_run", file=sys.stderr)
        sys.exit(2)
    return config, workdir, distributed, dry_run, flags.FLAGS.print_config


def run_dry(config, options) -> int:
    from genesis_jax.dryrun import DryRunError, dry_run, format_report, write_json
    from genesis_jax.errors import UserError
    try:
        if options["fit_compiles"] is not None and options["fit_compiles"] < 0:
            raise DryRunError(f"--fit_compiles must be >= 0, got {options['fit_compiles']}")
        search = {} if options["fit_compiles"] is None else {"fit_compiles": options["fit_compiles"]}
        result = dry_run(config, topology=options["topology"], device_memory_gb=options["device_memory_gb"],
                         **search)
    except UserError as e:  # DryRunError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result), flush=True)
    if options["json"]:
        write_json(result, options["json"])
        print(f"written: {options['json']}")
    return 0


def compilation_cache_dir() -> str | None:
    """Where compiled programs persist between runs: JAX_COMPILATION_CACHE_DIR if set (jax
    reads it itself), else $GENESIS_JAX_CACHE, else ~/.cache/genesis_jax/xla; "off": none."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    where = os.environ.get("GENESIS_JAX_CACHE", str(Path.home() / ".cache" / "genesis_jax" / "xla"))
    return None if where == "off" else where


def enable_compilation_cache(jax) -> None:
    """A rerun, a resume or a second run of a config loads its compiled steps instead of
    compiling them again (programs that took over a second to compile)."""
    where = compilation_cache_dir()
    if where and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", where)


def main(argv=None, default_config: str = "demo", program: str = "genesis_jax.train", doc: str = __doc__) -> int:
    config, workdir, distributed, dry_run, print_config = parse(list(sys.argv if argv is None else argv),
                                                                default_config, program, doc)
    if print_config:
        from genesis_jax.configs import describe
        print(describe(config))
        return 0
    import jax
    enable_compilation_cache(jax)
    if distributed is not None:
        jax.distributed.initialize(**distributed)
    from genesis_jax.errors import UserError
    from genesis_jax.trainer import TrainingDiverged, train, validate_config
    try:
        validate_config(config, require_data=dry_run is None)
    except UserError as e:
        print(f"error: bad config: {e}", file=sys.stderr)
        return 2
    if dry_run is not None:
        return run_dry(config, dry_run)
    try:
        summary = train(config, workdir)
    except (UserError, TrainingDiverged) as e:  # anything else is a bug: its traceback stays
        print(f"error: {e}", file=sys.stderr)
        return 1

    if summary.get("preempted") == "Ctrl-C":  # still exiting (async writes, JAX's atexit): a second Ctrl-C ends it quietly
        from genesis_jax.preemption import abort_now
        signal.signal(signal.SIGINT, lambda signum, frame: abort_now(f"the checkpoint of step {summary['end_step']} "
                                                                      f"was saved; run the same command to resume"))
    if not summary.get("preempted") and jax.process_index() == 0:
        vals = summary["val_losses"]
        if vals:
            print(f"done: step {summary['end_step']}, validation loss {vals[0][1]:.5f} (step {vals[0][0]}) -> "
                  f"{vals[-1][1]:.5f} (step {vals[-1][0]}), best {summary['best_val']:.5f} at step "
                  f"{summary['best_step']}; run directory {workdir}")
        elif summary["start_step"] == summary["end_step"]:  # resumed a run that had already finished
            print(f"done: the run had already finished at step {summary['end_step']} (best validation loss "
                  f"{summary['best_val']:.5f} at step {summary['best_step']}); run directory {workdir}")
        if summary.get("pytorch_export"):
            print(f"best weights for PyTorch: {summary['pytorch_export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
