"""``lowcomm train``: flags and YAML -> a validated config -> the run directory -> the workers.

Every :class:`TrainConfig` field is a flag. Everything is checked before any worker starts; bad
input exits with code 2 and one line on stderr, leaving ``--out`` untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from lowcomm.training.cli import usage_error
from lowcomm.training.config import ALGORITHM_PARAMETERS, TrainConfig, flag, load_config, under_torchrun
from lowcomm.training.launch import train
from lowcomm.training.rundir import prepare_run_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="YAML", help="options from a YAML file (flags win)")
    for name, field in TrainConfig.model_fields.items():
        if field.annotation is bool:
            parser.add_argument(flag(name), action="store_true", default=argparse.SUPPRESS, help=field.description)
            continue
        if name in ALGORITHM_PARAMETERS:
            default = " (default: the algorithm's own)"
        elif field.default_factory is None and field.default is not None:
            default = f" (default: {field.default})"
        else:
            default = ""
        parser.add_argument(flag(name), metavar="VALUE", default=argparse.SUPPRESS, help=field.description + default)


def reports() -> bool:
    """Whether this process speaks for the run: the launcher, or rank 0 under torchrun."""
    return not under_torchrun() or os.environ.get("RANK") == "0"


def run(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "config")}
    try:
        config = load_config(args.config, overrides)
        if reports():
            prepare_run_directory(config)
    except ValueError as error:
        return usage_error("train", str(error))
    if reports():
        print(
            f"lowcomm train: {config.algo} on {config.workers} {config.device} workers, {config.model} on "
            f"{config.data}, {config.steps} steps -> {config.out}"
        )
    try:
        train(config)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        message = f"worker {rank} failed (exit code {failure.exitcode}); see its log above"
        print(f"lowcomm train: error: {message}", file=sys.stderr)
        return 1
    if reports():
        summary = json.loads((config.out / "summary.json").read_text())
        print(
            f"lowcomm train: done: final eval loss {summary['final_eval_loss']:.4f} after {summary['steps']} steps "
            f"in {summary['wall_time_s']:.1f} s\n"
            f"results in {config.out}/: metrics.jsonl, summary.json, config.yaml, checkpoints/ "
            f"(TensorBoard: tensorboard --logdir {config.out / 'tensorboard'})"
        )
    return 0
