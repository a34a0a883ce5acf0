"""``lowcomm train``: flags and YAML -> a validated config -> the run directory -> the workers.

Every :class:`TrainConfig` field is a flag. Everything is checked before any worker starts; bad
input exits with code 2 and one line on stderr, leaving ``--out`` untouched.

With a ``--bandwidth`` limit and the real network (``--network none``), every worker runs in a
network namespace of its own behind a link of that rate (see
:mod:`lowcomm.launching.limited`); where that is impossible, a warning says so and the link
is modelled instead (``--network model``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from lowcomm.algorithms import ALGORITHMS
from lowcomm.cli import usage_error
from lowcomm.launching.limited import real_limit, run_limited
from lowcomm.training.config import (
    ALGORITHM_PARAMETERS,
    LAYOUT_FIELDS,
    TrainConfig,
    flag,
    load_config,
    preset_names,
    read_yaml,
    under_torchrun,
)
from lowcomm.training.rundir import CONFIG_FILE, prepare_run_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="YAML", help="options from a YAML file (flags win)")
    parser.add_argument("--preset", metavar="NAME",
                        help=f"a recipe shipped with lowcomm: {', '.join(preset_names())} (--config and flags win)")
    for name, field in TrainConfig.model_fields.items():
        if field.annotation in (bool, bool | None):
            parser.add_argument(flag(name), action="store_true", default=argparse.SUPPRESS, help=field.description)
            continue
        if name in ALGORITHM_PARAMETERS:
            default = declared_defaults(name)
        elif field.default_factory is None and field.default is not None:
            default = f" (default: {field.default})"
        else:
            default = ""
        parser.add_argument(flag(name), metavar="VALUE", default=argparse.SUPPRESS, help=field.description + default)


def declared_defaults(option: str) -> str:
    """`` (default: 32 for localsgd, ...; 50 for noloco)``: the algorithms that take ``option`` by its
    declared default ("" where that is None: the field's description says what None means)."""
    takers: dict[str, list[str]] = {}
    for algo, cls in ALGORITHMS.items():
        declared = cls.options().get(option)
        if declared is not None and declared.default is not None:
            takers.setdefault(str(declared.default), []).append(algo)
    listed = "; ".join(f"{default} for {', '.join(algos)}" for default, algos in takers.items())
    return f" (default: {listed})" if listed else ""


def reports() -> bool:
    """Whether this process speaks for the run: the launcher, or rank 0 under torchrun."""
    return not under_torchrun() or os.environ.get("RANK") == "0"


def run(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "config", "preset")}
    try:
        recorded = {} if args.config else recorded_config(overrides)
        config = load_config(args.config, recorded | overrides, args.preset)
        # Under torchrun this process is one worker already: the limit is the job's network's.
        limited, warning = (False, None) if under_torchrun() else real_limit(
            config.network, config.bandwidth, config.backend
        )
        if warning is not None:
            print(f"lowcomm train: warning: {warning}", file=sys.stderr)
            config.network = "model"
        if not (under_torchrun() or limited):  # under torchrun each node's workers prepare its own
            prepare_run_directory(config)
    except ValueError as error:
        return usage_error("train", str(error))
    if limited:
        return train_limited(config)
    if reports():
        print(
            f"lowcomm train: {config.algo} on {config.workers} {config.device} workers"
            f"{f' ({config.groups} groups of {config.group_size}, {config.inner} inside)' if config.grouped else ''}, "
            f"{config.model} on "
            f"{config.data}, {config.steps} steps -> {config.out}"
        )
        if config.resume and not (config.overwrite or under_torchrun() or config.live):
            from lowcomm.training.checkpoint import checkpoint_step, checkpoints_of, newest_complete_checkpoint

            found, _ = newest_complete_checkpoint(checkpoints_of(config.out))
            print(f"lowcomm train: resuming from step {checkpoint_step(found)} ({found})")
    # Imported here, so that ``lowcomm train --help`` and refused input never load the trainer.
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from lowcomm.training.launch import Refused, train
    from lowcomm.training.live import LiveFailure
    from lowcomm.training.outputs import LOSS_PLOT, SAMPLES_FILE

    try:
        train(config)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        message = f"worker {rank} failed (exit code {failure.exitcode}); see its log above"
        print(f"lowcomm train: error: {message}", file=sys.stderr)
        return 1
    except Refused as error:
        return usage_error("train", str(error))
    except LiveFailure as error:
        print(f"lowcomm train: error: {error}", file=sys.stderr)
        return 1
    except (SignalException, KeyboardInterrupt):
        return interrupted(config)
    if reports():
        out = config.out / f"group_{config.live_group or 0}" if config.live else config.out  # live: per group
        summary = json.loads((out / "summary.json").read_text())
        samples = out / SAMPLES_FILE
        if samples.is_file():
            print(f"\n{samples.read_text(encoding='utf-8')}")
        print(
            f"lowcomm train: done: final eval loss {summary['final_eval_loss']:.4f} after {summary['steps']} steps "
            f"in {summary['wall_time_s']:.1f} s\n"
            f"results in {out}/: {LOSS_PLOT}, {SAMPLES_FILE + ', ' if samples.is_file() else ''}"
            f"metrics.jsonl, summary.json, config.yaml, checkpoints/ "
            f"(TensorBoard: tensorboard --logdir {out / 'tensorboard'})"
        )
    return 0


def interrupted(config: TrainConfig) -> int:
    """After Ctrl-C (or SIGTERM), the workers stopped: draw ``loss.png`` from the records as they
    stand and say in one line where the run stopped and how to resume it; exit code 130."""
    from lowcomm.training.outputs import write_loss_plot

    out = config.out / "group_0" if config.live else config.out
    step = "?"
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        step = max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
        write_loss_plot(out, f"{config.algo} x{config.workers}: {config.model} on {config.data} (interrupted)")
    except (OSError, ValueError, KeyError, TypeError):
        pass  # nothing recorded yet, or a torn last record: the one line still tells how to go on
    print(f"\nlowcomm train: interrupted at step {step}; resume with: lowcomm train --out {config.out} --resume",
          file=sys.stderr)
    return 130


def recorded_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """With ``--resume`` (and no ``--config``): the options of the run's own ``config.yaml``, which
    stand where no flag is given; its layout (workers, groups, group size) only where no flag and no
    torchrun gives one, so that a run resumes in another layout."""
    if not overrides.get("resume") or "out" not in overrides:
        return {}
    recorded = Path(overrides["out"]) / CONFIG_FILE
    if not recorded.is_file():
        return {}
    values = read_yaml(recorded)
    if under_torchrun() or LAYOUT_FIELDS & overrides.keys():
        values = {name: value for name, value in values.items() if name not in LAYOUT_FIELDS}
    return values


def train_limited(config: TrainConfig) -> int:
    """Train ``config`` on namespaced workers behind real limited links; rank 0 sets up ``--out``."""
    with tempfile.TemporaryDirectory() as directory:
        resolved = Path(directory) / "config.yaml"
        resolved.write_text(config.to_yaml())
        command = ["lowcomm", "train", "--config", str(resolved)]
        return run_limited(config.workers, config.bandwidth, command, config.group_size or 1)
