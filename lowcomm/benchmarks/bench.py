"""``lowcomm bench``: several algorithms on the same model, data, seed and token budget, side by side.

Each algorithm trains as its own ``lowcomm train`` run in ``OUT/runs/ALGO`` with the train flags
given here (a flag naming an algorithm's parameter, like ``--sync-interval``, goes to the algorithms
that take it; ``--set ALGO.OPTION=VALUE`` sets an option for one algorithm only, to compare tuned
configurations) and the same token budget: ``--steps`` gradient steps, so PALSGD, whose
pseudo-synchronisation steps train on no tokens, runs ``S + (steps - S) / (1 - p)`` steps. Then ``OUT/results.csv``, three plots and ``OUT/report.md`` compare the runs. Under
a real bandwidth limit the report also sets the network model's predicted wall time beside each
measured one.
"""

from __future__ import annotations

import argparse
import inspect
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from lowcomm.algorithms import ALGORITHMS
from lowcomm.cli import usage_error
from lowcomm.communication.network_model import NetworkModel, parse_rate
from lowcomm.benchmarks.projection import project
from lowcomm.benchmarks.report import markdown_table, write_report
from lowcomm.benchmarks.results import COLUMNS, choose_target, results_rows, write_csv
from lowcomm.benchmarks.runs import Run, read_run
from lowcomm.launching.limited import real_limit
from lowcomm.plotting import plot_bench_curves
from lowcomm.training import train_command
from lowcomm.training.config import ALGORITHM_PARAMETERS, TrainConfig, flag, load_config

DEFAULT_ALGOS = ("ddp", "localsgd", "diloco", "palsgd", "noloco")
MODEL_CHECK_COLUMNS = ("algo", "measured_wall_time_s", "modelled_wall_time_s", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_command.add_arguments(parser)
    parser.add_argument("--algos", default=",".join(DEFAULT_ALGOS), metavar="A,B,...",
                        help=f"the algorithms to compare (default: {','.join(DEFAULT_ALGOS)})")
    parser.add_argument("--target-loss", type=float, metavar="LOSS",
                        help="the eval loss to reach (default: DDP's final eval loss)")
    parser.add_argument("--set", action="append", default=[], metavar="ALGO.OPTION=VALUE", dest="settings",
                        help="a train option for one algorithm only, e.g. palsgd.lr=2e-3 (repeatable)")


def run(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "algos", "target_loss", "settings")}
    try:
        algos = parse_algos(args.algos)
        if "algo" in flags:
            raise ValueError("--algo: name the algorithms to compare with --algos")
        if args.target_loss is not None and not math.isfinite(args.target_loss):
            raise ValueError(f"--target-loss: must be a finite number, got {args.target_loss}")
        if "ddp" not in algos and args.target_loss is None:
            raise ValueError("--target-loss: needed when ddp is not among --algos")
        own = parse_settings(args.settings, algos)
        out = Path(flags.pop("out", Path("lowcomm-runs") / datetime.now().strftime("bench-%Y%m%d-%H%M%S")))
        requested = {algo: load_config(args.config, run_flags(algo, flags, out) | own[algo]) for algo in algos}
        budgets = {algo: {"steps": token_budget_steps(config)} for algo, config in requested.items()}
        configs = {algo: load_config(args.config, run_flags(algo, flags, out) | own[algo] | budgets[algo])
                   for algo in algos}
        first = next(iter(requested.values()))
        limited, warning = real_limit(first.network, first.bandwidth, first.backend, first.grouped)
    except ValueError as error:
        return usage_error("bench", str(error))
    notes = []
    if warning is not None:
        notes.append(warning)
        print(f"lowcomm bench: warning: {warning}", file=sys.stderr)
        flags["network"] = "model"
    commands = {}
    for algo in algos:
        arguments = ["train", *as_flags(run_flags(algo, flags, out) | own[algo] | budgets[algo])]
        if args.config is not None:
            arguments += ["--config", str(args.config)]
        commands[algo] = " ".join(["lowcomm", *arguments])
        print(f"lowcomm bench: {commands[algo]}", flush=True)
        code = subprocess.run([sys.executable, "-m", "lowcomm", *arguments]).returncode
        if code != 0:
            print(f"lowcomm bench: error: the {algo} run failed (exit code {code}); see its output above", file=sys.stderr)
            return 1
    runs = [read_run(configs[algo].out) for algo in algos]
    target = choose_target(runs, args.target_loss)
    rows = results_rows(runs, target)
    write_csv(out / "results.csv", rows, COLUMNS)
    table = markdown_table(rows, COLUMNS)
    if limited:
        table += "\n\nThe network model against this real limit:\n\n" + model_check(runs, first)
    report = write_report(
        out,
        command=["lowcomm", "bench", "--algos", ",".join(algos), *as_flags(flags | {"out": out}),
                 *(["--target-loss", str(args.target_loss)] if args.target_loss is not None else []),
                 *(word for setting in args.settings for word in ("--set", setting)),
                 *(["--config", str(args.config)] if args.config is not None else [])],
        run_commands=commands,
        settings=settings(first, flags.get("network", first.network)),
        target=target,
        target_source="given" if args.target_loss is not None else "DDP's final eval loss",
        table=table,
        plots=plot_bench_curves([(run.algo, run.evaluations) for run in runs], target, out),
        notes=notes,
    )
    print(f"\n{table}\n\nlowcomm bench: done: {out / 'results.csv'}, {report} and plots in {out}/")
    return 0


def parse_algos(text: str) -> list[str]:
    algos = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in algos if name not in ALGORITHMS]
    if not algos or unknown:
        raise ValueError(f"--algos: unknown algorithm {unknown[0]!r}; choose from {', '.join(ALGORITHMS)}"
                         if unknown else "--algos: name at least one algorithm")
    if len(set(algos)) < len(algos):
        raise ValueError(f"--algos: an algorithm is named twice in {text!r}")
    return algos


def parse_settings(settings: list[str], algos: list[str]) -> dict[str, dict[str, str]]:
    """``["palsgd.lr=2e-3"]`` as ``{"palsgd": {"lr": "2e-3"}, ...}``, with an empty dict for the others."""
    own: dict[str, dict[str, str]] = {algo: {} for algo in algos}
    for setting in settings:
        target, _, value = setting.partition("=")
        algo, _, option = target.partition(".")
        option = option.replace("-", "_")
        if not (algo and option and value):
            raise ValueError(f"--set: expected ALGO.OPTION=VALUE, got {setting!r}")
        if algo not in own:
            raise ValueError(f"--set: {algo!r} is not among --algos")
        if option not in TrainConfig.model_fields or option in ("algo", "out"):
            raise ValueError(f"--set: {option!r} is not a train option of one algorithm")
        own[algo][option] = value
    return own


def run_flags(algo: str, flags: dict[str, Any], out: Path) -> dict[str, Any]:
    """The train flags of ``algo``'s run: the shared ones, the parameters it takes, its own --out."""
    takes = inspect.signature(ALGORITHMS[algo]).parameters
    shared = {k: v for k, v in flags.items() if k not in ALGORITHM_PARAMETERS or k in takes}
    return {"algo": algo, **shared, "out": out / "runs" / algo}


def token_budget_steps(config: TrainConfig) -> int:
    """Steps that give ``config``'s run the expected tokens of ``config.steps`` gradient steps:
    after its S warm-up steps, PALSGD trains on no tokens with probability p, so it runs
    S + (steps - S) / (1 - p) steps."""
    if not config.pseudo_sync_prob:
        return config.steps
    warmup = min(config.warmup_steps, config.steps)
    return warmup + math.ceil((config.steps - warmup) / (1 - config.pseudo_sync_prob))


def as_flags(values: dict[str, Any]) -> list[str]:
    """``{"sync_interval": 16, "overwrite": True}`` as ``["--sync-interval", "16", "--overwrite"]``."""
    arguments = []
    for name, value in values.items():
        arguments += [flag(name)] if value is True else [flag(name), str(value)]
    return arguments


def settings(config: TrainConfig, network: str) -> str:
    tokens = config.batch_size * config.grad_accum * config.seq_len
    link = "unlimited" if math.isinf(parse_rate(config.bandwidth)) else config.bandwidth
    how = {"none": "real (tc-tbf in network namespaces)" if link != "unlimited" else "real",
           "model": f"modelled, latency {config.latency} s"}[network]
    who = f"{config.workers} workers"
    if config.grouped:
        who = f"{config.groups} groups of {config.group_size} workers with {config.inner} inside"
    return (f"{who} ({config.backend} backend, {config.device}), {config.model} on {config.data}, "
            f"a budget of {config.steps} gradient steps of {tokens} tokens per worker, seed {config.seed}; "
            f"network: {link}, {how}.")


def model_check(runs: list[Run], config: TrainConfig) -> str:
    """The model's wall time for each run (its own compute, the modelled link) beside the measured one."""
    network = NetworkModel(parse_rate(config.bandwidth), config.latency)
    rows = []
    for run in runs:
        modelled = project(run, network, run.links, target=-math.inf).wall_time_s
        rows.append({"algo": run.algo, "measured_wall_time_s": run.wall_time_s, "modelled_wall_time_s": modelled,
                     "error": f"{modelled / run.wall_time_s - 1:+.1%}"})
    return markdown_table(rows, MODEL_CHECK_COLUMNS)
