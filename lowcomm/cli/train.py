"""``lowcomm train``: flags and YAML -> a validated config -> resolved for this machine -> the run
directory -> the workers.

Every :class:`TrainConfig` field is a flag (:data:`~lowcomm.training.config.FLAG_PATHS`), an
algorithm's options as its class declares them. Everything is checked before any worker starts;
bad input exits with code 2 and one line on stderr, leaving ``--out`` untouched.

With a ``--bandwidth`` limit and the real network (``--network none``), every worker runs in a
network namespace of its own behind a link of that rate (see
:mod:`lowcomm.launching.limited`; live groups: each group in one, :mod:`lowcomm.launching.live`);
where that is impossible, a warning says so and the link is modelled instead (``--network model``),
or, for live groups, the run is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lowcomm.algorithms import ALGORITHMS
from lowcomm.cli import usage_error
from lowcomm.launching.limited import real_limit, run_limited
from lowcomm.launching.rundir import CONFIG_FILE, prepare_run_directory, recorded_values
from lowcomm.training.config import (
    DEFAULT_ALGORITHM,
    FLAG_ONLY,
    FLAG_PATHS,
    LAYOUT_FIELDS,
    SECTIONS,
    TrainConfig,
    flag,
    load_config,
    preset_names,
    read_yaml,
    resolve,
    under_torchrun,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="YAML", help="options from a YAML file (flags win)")
    parser.add_argument("--preset", metavar="NAME",
                        help=f"a recipe shipped with lowcomm: {', '.join(preset_names())} (--config and flags win)")
    for name, (section, field) in FLAG_PATHS.items():
        if section == "algorithm" and field == "name":
            text = f"one of {', '.join(ALGORITHMS)} (default: {DEFAULT_ALGORITHM})"
        elif section == "algorithm":
            text = option_help(name)
            if {cls.options()[name].type for cls in ALGORITHMS.values() if name in cls.options()} == {bool}:
                parser.add_argument(flag(name), action="store_true", default=argparse.SUPPRESS, help=text)
                continue
        else:
            info = SECTIONS[section].model_fields[field]
            if info.annotation is bool:
                parser.add_argument(flag(name), action="store_true", default=argparse.SUPPRESS, help=info.description)
                continue
            shown = info.default_factory is None and info.default is not None
            text = f"{info.description}{f' (default: {info.default})' if shown else ''}"
        parser.add_argument(flag(name), metavar="VALUE", default=argparse.SUPPRESS, help=text)


def option_help(option: str) -> str:
    """An algorithm option's help, as the first class declaring it states it, and the algorithms that
    take it by their declared defaults: `` (default: 32 for localsgd, ...; 50 for noloco)`` (none
    listed where the default is None: the help says what None means)."""
    takers: dict[str, list[str]] = {}
    helps = []
    for algo, cls in ALGORITHMS.items():
        declared = cls.options().get(option)
        if declared is not None:
            helps.append(declared.help)
            if declared.default is not None:
                takers.setdefault(str(declared.default), []).append(algo)
    listed = "; ".join(f"{default} for {', '.join(algos)}" for default, algos in takers.items())
    return helps[0] + (f" (default: {listed})" if listed else "")


def reports() -> bool:
    """Whether this process speaks for the run: the launcher, or rank 0 under torchrun."""
    return not under_torchrun() or os.environ.get("RANK") == "0"


def run(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "config", "preset")}
    try:
        recorded = {} if args.config else recorded_config(overrides)
        config = resolve(load_config(args.config, recorded | overrides, args.preset))
        # Under torchrun this process is one worker already: the limit is the job's network's.
        limited, warning = (False, None) if under_torchrun() else real_limit(
            config.network.mode, config.network.bandwidth, config.run.backend
        )
        if warning is not None and config.live:
            raise ValueError("bandwidth: live groups behind a limit need network namespaces (Linux, root, "
                             "iproute2); or give --bandwidth unlimited")
        if warning is not None:
            print(f"lowcomm train: warning: {warning}", file=sys.stderr)
            config.network.mode = "model"
        if not (under_torchrun() or limited):  # under torchrun each node's workers prepare its own
            prepare_run_directory(config)
    except ValueError as error:
        return usage_error("train", str(error))
    if limited and not config.live:  # live groups go into namespaces of their own (lowcomm.launching.live)
        return train_limited(config)
    if reports():
        layout = config.layout
        print(
            f"lowcomm train: {config.algo} on {layout.workers} {config.run.device} workers"
            f"{f' ({layout.groups} groups of {layout.group_size}, {layout.inner} inside)' if config.grouped else ''}, "
            f"{config.model.name} on "
            f"{config.data.source}, {config.run.steps} steps -> {config.run.out}"
        )
        if config.run.resume and not (config.run.overwrite or under_torchrun() or config.live):
            from lowcomm.checkpointing.checkpoint import checkpoint_step, checkpoints_of, newest_complete_checkpoint

            found, _ = newest_complete_checkpoint(checkpoints_of(config.run.out))
            print(f"lowcomm train: resuming from step {checkpoint_step(found)} ({found})")
    # Imported here, so that ``lowcomm train --help`` and refused input never load the trainer.
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from lowcomm.launching.launch import Refused, train
    from lowcomm.launching.live import LiveFailure
    from lowcomm.reporting.outputs import LOSS_PLOT, SAMPLES_FILE

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
        out = config.run.out
        out = out / f"group_{config.fault_tolerance.live_group or 0}" if config.live else out  # live: per group
        summary = json.loads((out / "summary.json").read_text())
        samples = out / SAMPLES_FILE
        if samples.is_file():
            print(f"\n{samples.read_text(encoding='utf-8')}")
        print(
            f"lowcomm train: done: final eval loss {summary['final_eval_loss']:.4f} after {summary['steps']} steps "
            f"in {summary['wall_time_s']:.1f} s\n"
            f"results in {out}/: {LOSS_PLOT}, {SAMPLES_FILE + ', ' if samples.is_file() else ''}"
            f"metrics.jsonl, summary.json, config.yaml, resolved.yaml, checkpoints/ "
            f"(TensorBoard: tensorboard --logdir {out / 'tensorboard'})"
        )
    return 0


def interrupted(config: TrainConfig) -> int:
    """After Ctrl-C (or SIGTERM), the workers stopped: draw ``loss.png`` from the records as they
    stand and say in one line where the run stopped and how to resume it; exit code 130."""
    from lowcomm.reporting.outputs import write_loss_plot

    out = config.run.out / "group_0" if config.live else config.run.out
    step = "?"
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        step = max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
        title = f"{config.algo} x{config.layout.workers}: {config.model.name} on {config.data.source} (interrupted)"
        write_loss_plot(out, title)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # nothing recorded yet, or a torn last record: the one line still tells how to go on
    print(f"\nlowcomm train: interrupted at step {step}; resume with: lowcomm train --out {config.run.out} --resume",
          file=sys.stderr)
    return 130


def recorded_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """With ``--resume`` (and no ``--config``): the run's recorded options (its ``config.yaml`` with
    the values resolved for it, ``resolved.yaml``), which stand where no flag is given; its layout
    (workers, groups, group size) only where no flag and no torchrun gives one, so that a run resumes
    in another layout."""
    if not overrides.get("resume") or "out" not in overrides:
        return {}
    out = Path(overrides["out"])
    if not (out / CONFIG_FILE).is_file():
        return {}
    read_yaml(out / CONFIG_FILE)  # refuses a config.yaml that sets resume or overwrite
    values = {name: value for name, value in recorded_values(out).items() if name not in FLAG_ONLY}
    if under_torchrun() or LAYOUT_FIELDS & overrides.keys():
        values = {name: value for name, value in values.items() if name not in LAYOUT_FIELDS}
    return values


def train_limited(config: TrainConfig) -> int:
    """Train ``config`` on namespaced workers behind real limited links; rank 0 sets up ``--out``."""
    with tempfile.TemporaryDirectory() as directory:
        resolved = Path(directory) / "config.yaml"
        share = config.conditions.cpu_share  # the launcher gives it: the namespaced workers see no cgroups
        workers_config = config.model_copy(update={"conditions": config.conditions.model_copy(update={"cpu_share": None})})
        resolved.write_text(yaml.safe_dump(workers_config.model_dump(mode="json", exclude={"run": set(FLAG_ONLY)})))
        command = ["lowcomm", "train", "--config", str(resolved)]
        return run_limited(config.layout.workers, config.network.bandwidth, command, config.layout.group_size or 1,
                           share)
