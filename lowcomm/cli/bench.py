"""``lowcomm bench``: several algorithms on the same model, data, seed and budget, side by side.

Each algorithm trains as its own ``lowcomm train`` run in ``OUT/runs/ALGO`` with the train flags
given here (a flag naming an algorithm's parameter, like ``--sync-interval``, goes to the algorithms
that take it; ``--set ALGO.OPTION=VALUE`` sets an option for one algorithm only, to compare tuned
configurations). The budget is one of four protocols:

- ``--budget steps`` (the PALSGD paper's): every algorithm runs ``--steps`` optimizer steps; a
  PALSGD pseudo-synchronisation step skips its batch, so PALSGD trains on about 1 - p of the tokens.
- ``--budget tokens`` (the default): the same expected tokens, ``--steps`` gradient steps, so
  PALSGD runs ``S + (steps - S) / (1 - p)`` steps.
- ``--budget target`` (time to quality): DDP runs ``--steps``; every other algorithm runs until an
  evaluation's loss is at most DDP's final eval loss (or ``--target-loss``), or for ``--cap F``
  times those steps (default 3), its learning-rate schedule planned for the cap.
- ``--budget time``: DDP runs ``--steps``; every other algorithm runs until worker 0's clock passes
  DDP's at its final evaluation (or the cap), and is evaluated there.

DDP runs first; under ``target`` and ``time`` the others' stop comes from its run.

The targets are DDP's eval loss at the fractions ``--targets`` of its run (and ``--target-loss``).
Without ``--eval-every`` the evaluation grid is chosen so that it holds every target's step and
resolves at least 1/40 of the run: the largest divisor of the target steps' greatest common divisor
that is at most ``steps // 40`` (at least 1). Then ``OUT/results.csv``, three plots and
``OUT/report.md`` compare the runs. Under a real bandwidth limit the report also sets the network
model's predicted wall time beside each measured one.

With ``--worker-speeds`` every algorithm also runs with every worker at full speed, in
``OUT/runs/ALGO-full`` (the same flags, its stop under ``target`` and ``time`` the same): the
report's goodput is a run's tokens per second over its full-speed run's, beside each worker's idle
share (see :mod:`lowcomm.benchmarks.results`).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from lowcomm.algorithms import ALGORITHMS
from lowcomm.benchmarks.projection import project
from lowcomm.benchmarks.report import markdown_table, protocol_table, speeds_table, targets_table, write_report
from lowcomm.benchmarks.results import (
    COLUMNS, DEFAULT_FRACTIONS, check_target_loss, find_targets, parse_fractions, results_rows, target_step,
    write_csv,
)
from lowcomm.benchmarks.runs import Run, read_run
from lowcomm.cli import usage_error
from lowcomm.cli import train as train_command
from lowcomm.communication.network_model import NetworkModel, parse_rate
from lowcomm.launching.limited import real_limit
from lowcomm.ownership import MARKER, is_empty, mark, owner
from lowcomm.reporting.plotting import SYNC_PLOT, plot_bench_curves, save_figure, sync_figure
from lowcomm.training.config import FLAG_PATHS, TrainConfig, algorithm_flags, as_flags, load_config, resolve

DEFAULT_ALGOS = ("ddp", "localsgd", "diloco", "palsgd", "noloco")
MODEL_CHECK_COLUMNS = ("algo", "measured_wall_time_s", "modelled_wall_time_s", "error")
BUDGETS = ("steps", "tokens", "target", "time")
STOPPING = ("target", "time")
"""The budgets whose runs besides DDP's stop early, within a cap of ``--cap`` times DDP's steps."""
DEFAULT_CAP = 3.0
MIN_EVALUATIONS = 40
"""The automatic evaluation grid resolves at least 1/MIN_EVALUATIONS of the run."""
FULL_SPEED = "-full"
"""The suffix of an algorithm's reference run at full speed, under ``--worker-speeds``."""
BENCH_OPTIONS = ("command", "config", "preset", "algos", "target_loss", "settings", "budget", "targets", "cap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_command.add_arguments(parser)
    parser.add_argument("--algos", default=",".join(DEFAULT_ALGOS), metavar="A,B,...",
                        help=f"the algorithms to compare (default: {','.join(DEFAULT_ALGOS)})")
    parser.add_argument("--budget", choices=BUDGETS, default="tokens",
                        help="steps: every algorithm the same optimizer steps (the PALSGD paper's protocol); "
                        "tokens: the same tokens (default); target: the others until DDP's final eval loss (or "
                        "--target-loss); time: the others for DDP's wall-clock")
    parser.add_argument("--cap", type=float, metavar="F",
                        help=f"--budget target or time: the others run at most F times DDP's steps (default: {DEFAULT_CAP:g})")
    fractions = ",".join(f"{f:g}" for f in DEFAULT_FRACTIONS)
    parser.add_argument("--targets", default=fractions, metavar="F,...",
                        help=f"targets: DDP's eval loss at these fractions of its run (default: {fractions})")
    parser.add_argument("--target-loss", type=float, metavar="LOSS",
                        help="one more target: this eval loss (needed without a ddp run; under --budget target "
                        "the others run to it instead of DDP's final eval loss)")
    parser.add_argument("--set", action="append", default=[], metavar="ALGO.OPTION=VALUE", dest="settings",
                        help="a train option for one algorithm only, e.g. palsgd.lr=2e-3 (repeatable)")


def run(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in BENCH_OPTIONS}
    try:
        fractions = parse_fractions(args.targets)
        algos = parse_algos(args.algos)
        if "algo" in flags:
            raise ValueError("--algo: name the algorithms to compare with --algos")
        cap = check_protocol(args, algos, flags)
        if args.budget == "target" and args.target_loss is None:
            fractions = tuple(sorted({*fractions, 1.0}))  # the runs stop at DDP's final eval loss
        own = parse_settings(args.settings, algos)
        out = Path(flags.pop("out", Path("lowcomm-runs") / datetime.now().strftime("bench-%Y%m%d-%H%M%S")))
        check_bench_directory(out, flags)
        requested = {algo: resolve(load_config(args.config, run_flags(algo, flags, out) | own[algo], args.preset))
                     for algo in algos}
        if "ddp" in algos:
            ddp = requested["ddp"]
            check_grid(ddp.run.steps, fractions, ddp.eval.eval_every if "eval_every" in flags else 1)
        if "eval_every" not in flags:
            steps = (requested["ddp"] if "ddp" in algos else next(iter(requested.values()))).run.steps
            flags["eval_every"] = evaluation_grid(steps, fractions if "ddp" in algos else (1.0,))
        budgets = {algo: {"steps": planned_steps(config, args.budget, cap)} for algo, config in requested.items()}
        configs = {algo: resolve(load_config(args.config, run_flags(algo, flags, out) | own[algo] | budgets[algo],
                                             args.preset))
                   for algo in algos}
        runs_at_full_speed = [f"{algo}{FULL_SPEED}" for algo in algos] if "worker_speeds" in flags else []
        for name in runs_at_full_speed:
            algo = name.removesuffix(FULL_SPEED)
            configs[name] = resolve(load_config(args.config, full_speed_flags(algo, flags, out) | own[algo] |
                                                budgets[algo], args.preset))
        first = next(iter(requested.values()))
        limited, warning = real_limit(first.network.mode, first.network.bandwidth, first.run.backend)
    except ValueError as error:
        return usage_error("bench", str(error))
    notes = []
    if warning is not None:
        notes.append(warning)
        print(f"lowcomm bench: warning: {warning}", file=sys.stderr)
        flags["network"] = "model"
    try:
        out.mkdir(parents=True, exist_ok=True)
        mark(out, "bench")
    except OSError as error:
        return usage_error("bench", f"--out: cannot write to {out}: {error.strerror}")
    commands, stop = {}, {}
    for name in sorted(algos, key=lambda name: name != "ddp") + runs_at_full_speed:  # the stop comes from DDP's run
        algo = name.removesuffix(FULL_SPEED)
        if name != "ddp" and args.budget in STOPPING and not stop:
            ddp_run = read_run(configs["ddp"].run.out) if "ddp" in algos else None
            stop = stop_flags(args.budget, ddp_run, args.target_loss)
        given = full_speed_flags(algo, flags, out) if name in runs_at_full_speed else run_flags(algo, flags, out)
        arguments = ["train", *as_flags(given | own[algo] | budgets[algo] | ({} if algo == "ddp" else stop))]
        if args.config is not None:
            arguments += ["--config", str(args.config)]
        if args.preset is not None:
            arguments += ["--preset", args.preset]
        commands[name] = " ".join(["lowcomm", *arguments])
        print(f"lowcomm bench: {commands[name]}", flush=True)
        code = subprocess.run([sys.executable, "-m", "lowcomm", *arguments]).returncode
        if code != 0:
            print(f"lowcomm bench: error: the {name} run failed (exit code {code}); see its output above",
                  file=sys.stderr)
            return 1
    runs = [read_run(configs[algo].run.out) for algo in algos]
    full_speed = {name.removesuffix(FULL_SPEED): read_run(configs[name].run.out) for name in runs_at_full_speed}
    targets = find_targets(runs, fractions if "ddp" in algos else (), args.target_loss)
    rows = results_rows(runs, targets, args.budget, full_speed)
    write_csv(out / "results.csv", rows, COLUMNS)
    table = protocol_table(args.budget, runs, rows, targets) + targets_table(rows, targets)
    if full_speed:
        table += "\n\n" + speeds_table(runs, full_speed, flags["worker_speeds"])
    if limited:
        table += "\n\nThe network model against this real limit:\n\n" + model_check(runs, first)
    report = write_report(
        out,
        command=["lowcomm", "bench", "--algos", ",".join(algos), "--budget", args.budget, "--targets", args.targets,
                 *(["--cap", f"{cap:g}"] if args.budget in STOPPING else []),
                 *as_flags(flags | {"out": out}),
                 *(["--target-loss", str(args.target_loss)] if args.target_loss is not None else []),
                 *(word for setting in args.settings for word in ("--set", setting)),
                 *(["--config", str(args.config)] if args.config is not None else []),
                 *(["--preset", args.preset] if args.preset is not None else [])],
        run_commands=commands,
        settings=settings(first, flags.get("network", first.network.mode), args.budget,
                          configs[algos[0]].eval.eval_every, cap, stop),
        targets=targets,
        table=table,
        plots=plot_bench_curves([(run.algo, run.evaluations) for run in runs], [t.loss for t in targets], out)
        + plot_sync_diagnostics(runs, out),
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
        if option not in FLAG_PATHS or option in ("algo", "out"):
            raise ValueError(f"--set: {option!r} is not a train option of one algorithm")
        own[algo][option] = value
    return own


def check_bench_directory(out: Path, flags: dict[str, Any]) -> None:
    """Raise a one-line ValueError unless ``out`` is empty or a lowcomm bench that ``--overwrite`` or
    ``--resume`` (passed on to its runs) may continue: a bench writes only into a directory of its own."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is not a directory")
    if not out.is_dir() or is_empty(out):
        return
    if owner(out) != "bench":
        raise ValueError(f"--out: {out} is not empty and holds no lowcomm bench (no {MARKER} marker); "
                         "choose another directory")
    if not (flags.get("overwrite") or flags.get("resume")):
        raise ValueError(f"--out: {out} already holds a bench; pass --overwrite to replace it")


def run_flags(algo: str, flags: dict[str, Any], out: Path) -> dict[str, Any]:
    """The train flags of ``algo``'s run: the shared ones, the options its class declares, its own --out."""
    return {"algo": algo, **algorithm_flags(algo, flags), "out": out / "runs" / algo}


def full_speed_flags(algo: str, flags: dict[str, Any], out: Path) -> dict[str, Any]:
    """The train flags of ``algo``'s reference run: every worker at full speed, in ``OUT/runs/ALGO-full``."""
    given = {key: value for key, value in flags.items() if key != "worker_speeds"}
    return run_flags(algo, given, out) | {"out": out / "runs" / f"{algo}{FULL_SPEED}"}


def evaluation_grid(steps: int, fractions: tuple[float, ...]) -> int:
    """``eval_every`` for a run of ``steps``: the largest divisor of the greatest common divisor of
    the target steps that is at most ``steps // MIN_EVALUATIONS`` (at least 1)."""
    common = math.gcd(*(target_step(f, steps) for f in fractions))
    finest = max(1, steps // MIN_EVALUATIONS)
    return max(d for d in range(1, min(common, finest) + 1) if common % d == 0)


def check_grid(steps: int, fractions: tuple[float, ...], first: int) -> None:
    """Refuse targets before DDP's first evaluation, at step ``first`` of a run of ``steps``."""
    for fraction in fractions:
        if target_step(fraction, steps) < first:
            raise ValueError(f"--targets: {fraction:g} of {steps} steps comes before DDP's first evaluation "
                             f"(step {first})")


def planned_steps(config: TrainConfig, budget: str, cap: float = DEFAULT_CAP) -> int:
    """The steps ``config``'s run takes under ``budget`` (at most, where it may stop early). ``steps``:
    ``config.run.steps``. ``target`` and ``time``: DDP's ``config.run.steps``, the others' ``cap`` times that,
    rounded up. ``tokens``: the expected tokens of ``config.run.steps`` gradient steps; after its S warm-up
    steps, an algorithm whose steps skip their batch with probability q
    (:meth:`~lowcomm.algorithms.Strategy.skipped_batch_share`, PALSGD's p) runs S + (steps - S) / (1 - q) steps."""
    if budget in STOPPING:
        return config.run.steps if config.algo == "ddp" else math.ceil(round(cap * config.run.steps, 9))
    skipped = ALGORITHMS[config.algo].skipped_batch_share(config.algorithm_kwargs())
    if budget == "steps" or not skipped:
        return config.run.steps
    warmup = min(config.algorithm.warmup_steps, config.run.steps)
    return warmup + math.ceil((config.run.steps - warmup) / (1 - skipped))


def settings(config: TrainConfig, network: str, budget: str, eval_every: int, cap: float | None,
             stop: dict[str, float]) -> str:
    tokens = config.data.batch_size * config.data.grad_accum * config.data.seq_len
    steps = config.run.steps
    link = "unlimited" if math.isinf(parse_rate(config.network.bandwidth)) else config.network.bandwidth
    how = {"none": "real (tc-tbf in network namespaces)" if link != "unlimited" else "real",
           "model": f"modelled, latency {config.network.latency} s"}[network]
    protocol = {
        "steps": f"equal steps (the PALSGD paper's protocol): every algorithm runs {steps} optimizer steps "
        f"of {tokens} tokens per worker, and a PALSGD pseudo-synchronisation step skips its batch",
        "tokens": f"an equal token budget: {steps} gradient steps of {tokens} tokens per worker (PALSGD runs "
        "more steps, since its pseudo-synchronisation steps train on none)",
        "target": f"time to quality: DDP runs {steps} steps of {tokens} tokens per worker; every other "
        f"algorithm runs until an evaluation's loss is at most {stop.get('stop_at_loss', 0):.4f}, or "
        f"{steps} x {cap:g} steps (the cap) if none is, its learning-rate schedule planned for the cap",
        "time": f"equal wall-clock: DDP runs {steps} steps of {tokens} tokens per worker, its final "
        f"evaluation at {stop.get('stop_after_s', 0):.1f} s on worker 0's clock; every other algorithm stops at "
        f"its last synchronisation before its clock would pass that (or at {steps} x {cap:g} steps, the cap) "
        "and is evaluated there, its learning-rate schedule planned for the cap",
    }[budget]
    if budget in STOPPING and config.optimizer.lr_schedule == "cosine":
        protocol += (" (a cosine schedule decays over DDP's steps for DDP and over the cap for the others, so the "
                     "comparison is exact only with --lr-schedule constant)")
    who = f"{config.layout.workers} workers"
    if config.grouped:
        who = f"{config.layout.groups} groups of {config.layout.group_size} workers with {config.layout.inner} inside"
    return (f"{who} ({config.run.backend} backend, {config.run.device}), {config.model.name} on {config.data.source}, "
            f"{protocol}; evaluation every {eval_every} steps, seed {config.run.seed}; network: {link}, {how}.")


def check_protocol(args: argparse.Namespace, algos: list[str], flags: dict[str, Any]) -> float:
    """Refuse a budget, cap or target that cannot give an answer, before any run starts; return the cap."""
    check_target_loss(args.target_loss)
    if "ddp" not in algos and args.target_loss is None:
        raise ValueError("--target-loss: needed when ddp is not among --algos")
    if args.budget == "time" and "ddp" not in algos:
        raise ValueError("--budget: time gives every algorithm DDP's wall-clock; name ddp among --algos")
    if args.budget in STOPPING and algos == ["ddp"]:
        raise ValueError(f"--budget: {args.budget} runs other algorithms against DDP; name one besides ddp in --algos")
    if args.cap is not None and args.budget not in STOPPING:
        raise ValueError(f"--cap: only --budget target or time takes it, not {args.budget}")
    cap = DEFAULT_CAP if args.cap is None else args.cap
    if not (math.isfinite(cap) and cap >= 1):
        raise ValueError(f"--cap: must be at least 1 (times DDP's steps), got {cap:g}")
    if given := [name for name in ("stop_at_loss", "stop_after_s") if name in flags]:
        raise ValueError(f"--{given[0].replace('_', '-')}: bench sets it with --budget target or time")
    return cap


def stop_flags(budget: str, ddp: Run | None, target_loss: float | None) -> dict[str, float]:
    """The early stop of the runs besides DDP's under ``budget``: ``target``, at ``target_loss`` or else
    DDP's final eval loss; ``time``, at DDP's clock at its final evaluation."""
    if budget == "target":
        return {"stop_at_loss": target_loss if target_loss is not None else ddp.final_eval_loss}
    return {"stop_after_s": ddp.evaluations[-1].elapsed_s}


def plot_sync_diagnostics(runs: list[Run], out: Path) -> list[str]:
    """``OUT/sync_diagnostics.png`` for the runs whose outer steps have diagnostics; its name, if drawn."""
    syncs = [(run.algo, run.sync_diagnostics) for run in runs if run.sync_diagnostics]
    if not syncs:
        return []
    save_figure(sync_figure(syncs), out / SYNC_PLOT)
    return [SYNC_PLOT]


def model_check(runs: list[Run], config: TrainConfig) -> str:
    """The model's wall time for each run (its own compute, the modelled link) beside the measured one."""
    network = NetworkModel(parse_rate(config.network.bandwidth), config.network.latency)
    rows = []
    for run in runs:
        modelled = project(run, network, run.links, target=-math.inf).wall_time_s
        rows.append({"algo": run.algo, "measured_wall_time_s": run.wall_time_s, "modelled_wall_time_s": modelled,
                     "error": f"{modelled / run.wall_time_s - 1:+.1%}"})
    return markdown_table(rows, MODEL_CHECK_COLUMNS)
