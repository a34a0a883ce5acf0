"""The run directory (``--out``): refuse one that holds another run, clear it for ``--overwrite``,
record the resolved config in it, and read it back.

A resumed run is the same run: every option that decides what it computes must match, except
``--steps``, which may extend (or shorten) it down to the steps already done; the trainer then
re-plans the learning-rate schedule for the new length.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from lowcomm.atomic import write_atomically
from lowcomm.training.checkpoint import checkpoint_step, checkpoints_of, newest_complete_checkpoint
from lowcomm.training.config import TrainConfig, run_identity

CONFIG_FILE = "config.yaml"


def prepare_run_directory(config: TrainConfig) -> None:
    """Make ``config.out`` ready for this run and write ``config.yaml``; raise a one-line ValueError
    (having written nothing) if it holds something else."""
    out = config.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is not a directory")
    if out.is_dir() and any(out.iterdir()):
        saved = out / CONFIG_FILE
        if not saved.is_file():
            raise ValueError(f"--out: {out} is not empty and holds no lowcomm run; choose another directory")
        if config.overwrite:
            shutil.rmtree(out)
        elif config.resume:
            check_same_run(config, saved)
        else:
            raise ValueError(
                f"--out: {out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(out / CONFIG_FILE, lambda temporary: temporary.write_text(config.to_yaml()))
    except OSError as error:
        raise ValueError(f"--out: cannot write to {out}: {error.strerror}") from None


def check_same_run(config: TrainConfig, saved_config: os.PathLike[str]) -> None:
    """Raise unless the run recorded in ``saved_config`` computes the same thing as ``config``."""
    try:
        with open(saved_config, encoding="utf-8") as file:
            saved = yaml.safe_load(file)
        saved_identity = run_identity(saved)
    except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError):
        raise ValueError(f"--out: cannot read the run recorded in {saved_config}") from None
    if (saved.get("groups") is None) != (config.groups is None):
        had = "without" if saved.get("groups") is None else "with"
        raise ValueError(f"--out: {config.out} holds a run {had} worker groups; resume it {had} them "
                         "(its checkpoints hold another layout), or choose another --out")
    identity = config.run_identity()
    for key in sorted(identity.keys() | saved_identity.keys()):
        if key != "steps" and identity.get(key) != saved_identity.get(key):
            raise ValueError(
                f"--out: {config.out} holds a different run ({key}: {saved_identity.get(key)!r} there, "
                f"{identity.get(key)!r} here); choose another --out or pass --overwrite"
            )
    if identity["steps"] != saved_identity.get("steps"):
        check_steps_not_done(config)


def check_steps_not_done(config: TrainConfig) -> None:
    """Raise if the run in ``config.out`` has already trained more than ``config.steps`` steps."""
    found, _ = newest_complete_checkpoint(checkpoints_of(config.out))
    done = 0 if found is None else checkpoint_step(found)
    if config.steps < done:
        raise ValueError(
            f"--steps: {config.out} has already trained {done} steps; resume it with --steps {done} or more"
        )


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The configuration recorded in ``run_dir``; a one-line ValueError if there is none."""
    if not run_dir.is_dir():
        raise ValueError(f"RUN_DIR: {run_dir} is not a directory")
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"RUN_DIR: {run_dir} holds no lowcomm run ({CONFIG_FILE} is missing)") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        raise ValueError(f"RUN_DIR: cannot read {run_dir / CONFIG_FILE}") from None
    if not isinstance(config, dict):
        raise ValueError(f"RUN_DIR: {run_dir / CONFIG_FILE} is not a lowcomm run's configuration")
    return config
