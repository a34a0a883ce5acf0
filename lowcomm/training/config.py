"""The configuration of one training run: defaults, preset, YAML file and flags, in sections.

A config is a few sections (torchtitan's style): ``run``, ``layout``, ``model``, ``data``,
``optimizer``, ``algorithm``, ``eval``, ``checkpoint``, ``network``, ``fault_tolerance``,
``conditions``. The ``algorithm`` section is ``{name: ..., <its options>}``: the options the chosen algorithm's class
declares (:meth:`lowcomm.algorithms.Strategy.options`), with their declared defaults and checks; an
option it does not declare is an error. Every field is also a flat ``lowcomm train`` flag
(:data:`FLAG_PATHS`: ``--sync-interval`` is ``algorithm.sync_interval``, ``--algo`` is
``algorithm.name``), and a YAML file may hold the sections or the flat names (as runs recorded by
an older lowcomm do).

Validation (:func:`load_config`) reads nothing but its input. :func:`resolve` then checks the
config against this machine (the GPUs, torchrun's environment, the data files, the model's files)
and fills in what the machine decides (``device: auto``, the worker-group layout, Muon's learning
rate); a run records the config as given (``config.yaml``) and the values resolved apart
(``resolved.yaml``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from lowcomm.algorithms import ALGORITHMS
from lowcomm.algorithms.options import Float, Int, problem_text
from lowcomm.communication.network_model import parse_rate
from lowcomm.data.spec import check_text_corpus, parse_data_spec
from lowcomm.data.tokenizer import check_tokenizer_source, load_tokenizer
from lowcomm.models import GPT_NEO_SHAPES, MODEL_NAMES, build_model, model_spec
from lowcomm.models.hf_local import absolute_hf_name, is_hf_name
from lowcomm.training.conditions import parse_speeds
from lowcomm.training.cpu_share import resolve_share

MIN_VOCABULARY = 257
"""The fewest tokens lowcomm's byte-level BPE has: the 256 bytes and end-of-text."""
IMAGE_SOURCES = frozenset({"synthetic-images", "image-folder"})
DEFAULT_ALGORITHM = "palsgd"

QUICK_START = {"outer_lr": 0.7}
"""What the embedded default run (no ``--config``, no ``--algo``) changes in PALSGD's paper defaults.

With the paper's outer learning rate of 0.1, z trails the workers through a run this short (eval loss
0.77 after the default 384 steps, against 0.64 with DiLoCo's 0.7 and 0.64 for DDP).
"""

MUON_LR = 1e-3
"""torch.optim.Muon's default learning rate, ``--muon-lr``'s."""

LAUNCH_FIELDS = frozenset(
    {"out", "resume", "overwrite", "max_restarts", "hang_timeout", "keep_checkpoints", "bind_all", "cache_dir",
     "network", "bandwidth", "latency", "min_groups", "lighthouse", "live_group", "cpu_share"}
)
"""Flags that say how a run is launched, not what it computes: they may change when it resumes."""

FLAG_ONLY = ("resume", "overwrite")
"""Options only a flag may give: a YAML file (a run's own ``config.yaml``, or one from someone else)
must not make lowcomm delete or take over a directory."""

LAYOUT_FIELDS = frozenset({"workers", "groups", "group_size"})
"""A run with worker groups may resume as K' x G' instead of K x G: its checkpoints reshard."""


def default_out() -> Path:
    return Path("lowcomm-runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lowcomm"


def named(flag: str) -> dict[str, Any]:
    """The field's flag where it is not the field's name (``model.name`` is ``--model``)."""
    return {"json_schema_extra": {"flag": flag}}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(Section):
    """What runs, where, for how long."""

    out: Path = Field(default_factory=default_out, description="run directory (default lowcomm-runs/<time>)")
    seed: Int = Field(0, ge=0, lt=2**32, description="seeds the model, the data order and the coins")
    steps: Int = Field(384, ge=1, le=10**9, description="training steps per worker")
    stop_at_loss: Float | None = Field(
        None, gt=0, description="stop at the first evaluation whose eval loss is at most this (before --steps)"
    )
    stop_after_s: Float | None = Field(
        None, gt=0, description="stop where the algorithm synchronises (every H steps; DDP: every step) before "
        "worker 0's clock would pass this many seconds by the next such step, and evaluate there (before --steps)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="cpu (gloo), cuda (nccl, one GPU per local rank), auto: cuda where there is a GPU"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: forward passes under bfloat16 autocast")
    compile: bool = Field(False, description="compile the model with torch.compile")
    backend: Literal["dist", "sim"] = Field(
        "dist", description="dist: a process per worker; sim: all workers simulated in this process"
    )
    sim_passes: Literal["auto", "batched", "threads"] = Field(
        "auto",
        description="sim: the workers' forward and backward passes batched into one (vmap) or each in its "
        "worker's thread (auto: batched on a GPU, threads on CPU, where they measured faster)",
    )
    resume: bool = Field(False, description="continue the run in --out from its newest complete checkpoint")
    overwrite: bool = Field(False, description="first delete the files of the lowcomm run in --out (nothing else)")


class LayoutSection(Section):
    """The workers and their groups (any two of workers, groups and group_size give the third)."""

    workers: Int = Field(2, ge=1, le=1024, description="worker processes (under torchrun: its WORLD_SIZE)")
    groups: Int | None = Field(
        None, ge=1, le=1024, description="K worker groups, between which the algorithm runs (under torchrun: its nodes)"
    )
    group_size: Int | None = Field(
        None, ge=1, le=1024, description="G processes per group, training one model together (default 1)"
    )
    inner: Literal["ddp", "fsdp"] | None = Field(
        None, description="inside a group: ddp (a replica per process) or fsdp (FSDP2 shards); default ddp"
    )


class ModelSection(Section):
    name: str = Field(
        "gpt-tiny", description=f"one of {', '.join(MODEL_NAMES)}, or hf:DIR: any transformers causal LM from a "
        "local directory (its weights, or a config.json alone: randomly initialised), never from a hub",
        **named("model"),
    )
    impl: Literal["lowcomm", "hf"] = Field(
        "lowcomm", description="lowcomm's own modules or HF transformers", **named("model_impl")
    )

    @field_validator("name")
    @classmethod
    def known_model(cls, name: str) -> str:
        """A model lowcomm names, or an ``hf:`` directory, made absolute so that a resumed run or an
        export finds it from anywhere (its files are :func:`resolve`'s to check)."""
        if is_hf_name(name):
            return absolute_hf_name(name)
        if name not in MODEL_NAMES:
            raise ValueError(f"model: unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
        return name


class DataSection(Section):
    source: str = Field(
        "synthetic-stories", description="synthetic-stories, synthetic-images, PATH, glob or hf:NAME[:SPLIT]",
        **named("data"),
    )
    tokenizer: str | None = Field(None, description="HF tokenizer name or path (default: a BPE trained on the data)")
    vocab_size: Int = Field(2048, ge=257, le=2**20, description="vocabulary of the trained BPE")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="where tokenizers and datasets are cached")
    seq_len: Int = Field(64, ge=1, le=2**20, description="tokens per sequence")
    batch_size: Int = Field(16, ge=1, le=2**16, description="sequences (or images) per micro-batch per worker")
    grad_accum: Int = Field(1, ge=1, le=2**12, description="micro-batches per step")


class OptimizerSection(Section):
    """The inner optimizer, its learning-rate schedule and the clipping."""

    name: Literal["adamw", "muon", "sgd"] = Field(
        "adamw", description="inner optimizer: adamw; muon (torch.optim.Muon for the hidden weight matrices, "
        "AdamW for embeddings, output head, norms and biases, as MuLoCo); sgd (SGD with momentum 0.9)",
        **named("optimizer"),
    )
    lr: Float = Field(3e-3, gt=0, le=10, description="peak inner learning rate (of AdamW, SGD, or muon's AdamW part)")
    lr_warmup: Int = Field(32, ge=0, le=10**9, description="steps of linear learning-rate warm-up")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after the warm-up: cosine decay to lr * min_lr_ratio, or constant"
    )
    min_lr_ratio: Float = Field(0.1, ge=0, le=1, description="cosine decay ends at lr * this")
    weight_decay: Float = Field(0.01, ge=0, le=10, description="weight decay (decoupled; for sgd an L2 term)")
    muon_lr: Float | None = Field(
        None, gt=0, le=10, description=f"muon: Muon's peak learning rate (default {MUON_LR}, torch.optim.Muon's)"
    )
    max_grad_norm: Float | None = Field(1.0, gt=0, description="gradient clipping norm")


class EvalSection(Section):
    eval_every: Int = Field(64, ge=1, le=10**9, description="steps between evaluations of the global model")
    eval_batches: Int = Field(8, ge=1, le=2**16, description="held-out batches per evaluation")


class CheckpointSection(Section):
    checkpoint_every: Int = Field(128, ge=1, le=10**9, description="steps between checkpoints")
    keep_checkpoints: Int | None = Field(None, ge=1, le=10**6, description="keep only the newest K checkpoints")


class NetworkSection(Section):
    mode: Literal["none", "model"] = Field(
        "none", description="none: the real network (limited to --bandwidth in namespaces); model: modelled delays",
        **named("network"),
    )
    bandwidth: str = Field(
        "unlimited", description="link rate per worker (per group with --groups), tc-style: 100mbit, 1gbit, unlimited"
    )
    latency: Float = Field(0.0, ge=0, le=10, description="seconds per message (--network model)")
    bind_all: bool = Field(False, description="listen on all interfaces, not only 127.0.0.1")

    @field_validator("bandwidth")
    @classmethod
    def valid_rate(cls, bandwidth: str) -> str:
        parse_rate(bandwidth)
        return bandwidth


class FaultToleranceSection(Section):
    mode: Literal["restart", "live"] = Field(
        "restart", description="restart: a failure restarts every worker from a checkpoint; live: the other "
        "worker groups train on and a restarted group rejoins, healed from a peer (needs lowcomm[ft])",
        **named("fault_tolerance"),
    )
    max_restarts: Int = Field(0, ge=0, le=10**6, description="times the launcher may restart a failed group")
    hang_timeout: Float = Field(
        300.0, gt=0, le=10**6, description="seconds a collective may wait before the group fails"
    )
    min_groups: Int = Field(1, ge=1, le=1024, description="live: fewer live groups than this stop the run")
    lighthouse: str | None = Field(
        None, description="live, several machines: the torchft lighthouse's HOST:PORT (default: started here)"
    )
    live_group: Int | None = Field(
        None, ge=0, le=1023, description="live with --lighthouse: the one group this machine runs (0..K-1)"
    )


class ConditionsSection(Section):
    """The conditions the workers train under: their speeds (:mod:`lowcomm.training.conditions`) and CPU
    shares (:mod:`lowcomm.training.cpu_share`)."""

    worker_speeds: list[float] | None = Field(
        None, description="each worker's speed in (0, 1], comma-separated (with --groups: each group's): its steps "
        "take 1/speed of their natural time, by waiting after its compute (1 is the natural speed, the fastest)"
    )
    cpu_share: Literal["auto"] | float | None = Field(
        None, description="cores per worker process: floor(F) threads (at least 1) and a CPU cgroup quota of F "
        "cores, so that a worker's speed does not depend on the others' (auto: the cores over the workers here)"
    )

    @field_validator("worker_speeds", mode="before")
    @classmethod
    def valid_speeds(cls, speeds: Any) -> list[float] | None:
        return parse_speeds(speeds)

    @field_validator("cpu_share", mode="before")
    @classmethod
    def valid_share(cls, share: Any) -> str | float | None:
        if share is None or share == "auto":
            return share
        try:
            cores = float(share) if not isinstance(share, bool) else math.nan
        except (TypeError, ValueError):
            cores = math.nan
        if not (math.isfinite(cores) and cores > 0):
            raise ValueError(f"expected auto or a number of cores above 0, got {share!r}")
        return cores


def algorithm_section(algo: str) -> type[Section]:
    """The ``algorithm:`` section of ``algo``: its name and the options its class declares as flags."""
    options = {
        name: (option.type, Field(option.default, description=option.help))
        for name, option in ALGORITHMS[algo].options().items() if option.flag
    }
    name = (Literal[algo], Field(algo, description=f"one of {', '.join(ALGORITHMS)}", **named("algo")))
    return create_model(f"{ALGORITHMS[algo].__name__}Section", __base__=Section, __module__=__name__, name=name,
                        **options)


ALGORITHM_SECTIONS: dict[str, type[Section]] = {algo: algorithm_section(algo) for algo in ALGORITHMS}
globals().update({section.__name__: section for section in ALGORITHM_SECTIONS.values()})  # picklable by name
AlgorithmSection = Annotated[Union[tuple(ALGORITHM_SECTIONS.values())], Field(discriminator="name")]  # noqa: UP007

SECTIONS: dict[str, type[Section]] = {
    "run": RunSection, "layout": LayoutSection, "model": ModelSection, "data": DataSection,
    "optimizer": OptimizerSection, "eval": EvalSection, "checkpoint": CheckpointSection,
    "network": NetworkSection, "fault_tolerance": FaultToleranceSection, "conditions": ConditionsSection,
}
"""The sections besides ``algorithm``, whose fields depend on the algorithm chosen."""


def flag_name(section: type[Section], field: str) -> str:
    extra = section.model_fields[field].json_schema_extra
    return extra["flag"] if isinstance(extra, dict) else field


ALGORITHM_PARAMETERS = tuple(dict.fromkeys(
    name for algorithm in ALGORITHMS.values() for name, option in algorithm.options().items() if option.flag
))
"""The algorithms' options that are ``lowcomm train`` flags (keys of the ``algorithm:`` section)."""

FLAG_PATHS: dict[str, tuple[str, str]] = {
    **{flag_name(cls, field): (section, field) for section, cls in SECTIONS.items() for field in cls.model_fields},
    "algo": ("algorithm", "name"),
    **{name: ("algorithm", name) for name in ALGORITHM_PARAMETERS},
}
"""Each flag's (section, field)."""
FIELD_FLAGS = {path: name for name, path in FLAG_PATHS.items()}


class TrainConfig(BaseModel):
    """Everything ``lowcomm train`` needs; the defaults are the embedded quick-start run."""

    model_config = ConfigDict(extra="forbid")

    run: RunSection = Field(default_factory=RunSection)
    layout: LayoutSection = Field(default_factory=LayoutSection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    algorithm: AlgorithmSection = Field(default_factory=ALGORITHM_SECTIONS[DEFAULT_ALGORITHM])
    eval: EvalSection = Field(default_factory=EvalSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    network: NetworkSection = Field(default_factory=NetworkSection)
    fault_tolerance: FaultToleranceSection = Field(default_factory=FaultToleranceSection)
    conditions: ConditionsSection = Field(default_factory=ConditionsSection)
    _given: TrainConfig | None = PrivateAttr(None)  # resolved: the config it was resolved from

    @field_validator("algorithm", mode="before")
    @classmethod
    def known_algorithm(cls, section: Any) -> Any:
        if isinstance(section, Mapping):
            section = {"name": DEFAULT_ALGORITHM, **section}
            if not isinstance(section["name"], str):
                raise ValueError(f"algo: Input should be a valid string (got {section['name']!r})")
            if section["name"] not in ALGORITHMS:
                raise ValueError(f"algo: unknown algorithm {section['name']!r}; choose one of {', '.join(ALGORITHMS)}")
        return section

    @model_validator(mode="after")
    def consistent(self) -> TrainConfig:
        """The rules between fields that need nothing but the config."""
        if self.model.impl == "hf" and self.model.name not in GPT_NEO_SHAPES:
            raise ValueError(f"model_impl: hf exists only for {', '.join(GPT_NEO_SHAPES)}")
        faults = self.fault_tolerance
        live_only = {"min_groups": 1, "lighthouse": None, "live_group": None}
        if not self.live and (given := [name for name, unset in live_only.items() if getattr(faults, name) != unset]):
            raise ValueError(f"{given[0]}: only --fault-tolerance live takes it")
        if self.run.backend == "sim" and faults.max_restarts > 0:
            raise ValueError("max_restarts: the simulation does not restart workers")
        for name, value in self.conditions:
            if value is not None and self.run.backend == "sim":
                raise ValueError(f"{name}: only a --backend dist run takes it")
        if self.run.sim_passes != "auto" and self.run.backend != "sim":
            raise ValueError("sim_passes: only --backend sim takes it")
        if self.optimizer.name != "muon" and self.optimizer.muon_lr is not None:
            raise ValueError("muon_lr: only --optimizer muon takes it")
        if self.algorithm_options().get("local_steps") == "adaptive":
            if self.live:
                raise ValueError("local_steps: adaptive runs without --fault-tolerance live")
            if self.run.backend == "sim" and self.run.sim_passes != "threads":
                raise ValueError("local_steps: adaptive with --backend sim needs --sim-passes threads (batched passes "
                                 "take every worker's step together)")
        muon_lr = self.optimizer.muon_lr or MUON_LR if self.optimizer.name == "muon" else self.optimizer.lr
        for lr in {self.optimizer.lr, muon_lr}:
            ALGORITHMS[self.algo].check_options(lr, self.algorithm_options())
        return self

    @property
    def algo(self) -> str:
        return self.algorithm.name

    @property
    def live(self) -> bool:
        return self.fault_tolerance.mode == "live"

    @property
    def grouped(self) -> bool:
        """Whether the run has worker groups (a mesh); without them every process is a worker."""
        return self.layout.groups is not None

    def with_run(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` to the ``run`` section."""
        return self.model_copy(update={"run": self.run.model_copy(update=changes)})

    def algorithm_options(self) -> dict[str, Any]:
        """The ``algorithm:`` section's options (every one the algorithm declares as a flag)."""
        return self.algorithm.model_dump(exclude={"name"})

    def algorithm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``ALGORITHMS[algo]`` besides the model and optimizer: its
        section's options, the run's seed where it declares one, and the clipping."""
        kwargs = self.algorithm_options()
        if "seed" in ALGORITHMS[self.algo].options():
            kwargs["seed"] = self.run.seed
        return {**kwargs, "max_grad_norm": self.optimizer.max_grad_norm}

    def flat(self) -> dict[str, Any]:
        """The values by flag name (JSON types)."""
        return flatten(self.model_dump(mode="json"))

    def run_identity(self) -> dict[str, Any]:
        """The fields that decide what the run computes (two runs with equal identities are one run)."""
        return run_identity(self.flat())

    def to_yaml(self) -> str:
        """The config as given (before :func:`resolve`), as a run records it: without :data:`FLAG_ONLY`,
        which no YAML file may set."""
        given = self._given or self
        return yaml.safe_dump(given.model_dump(mode="json", exclude={"run": set(FLAG_ONLY)}), sort_keys=False)

    def resolved_yaml(self) -> str:
        """The values :func:`resolve` filled in or changed, by section, as a run records them beside its config."""
        given = (self._given or self).model_dump(mode="json")
        changed = {section: {key: value for key, value in values.items() if given[section].get(key) != value}
                   for section, values in self.model_dump(mode="json").items()}
        return yaml.safe_dump({section: values for section, values in changed.items() if values}, sort_keys=False)


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config's values (in sections, or flat) by flag name."""
    flat: dict[str, Any] = {}
    for key, value in nest(values).items():
        if isinstance(value, Mapping):
            flat |= {FIELD_FLAGS.get((key, field), field): inner for field, inner in value.items()}
        else:
            flat[key] = value
    return flat


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config's values in sections, from sections or flat flag names (dashes or underscores), as
    a YAML file, a run recorded by an older lowcomm, or the flags give them. Unknown keys stay at the
    top, for validation to name."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if (key in SECTIONS or key == "algorithm") and isinstance(value, Mapping):
            nested.setdefault(key, {}).update({name.replace("-", "_"): inner for name, inner in value.items()})
        elif key in FLAG_PATHS:
            section, field = FLAG_PATHS[key]
            nested.setdefault(section, {})[field] = value
        else:
            nested[key] = value
    return nested


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Nested configs, each section's keys from the last layer that gives them."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def flag_default(name: str, algo: str) -> Any:
    """The default of flag ``name`` (for ``algo``'s options, its declared one; None where it does not take it)."""
    section, field = FLAG_PATHS[name]
    if section == "algorithm":
        declared = ALGORITHMS[algo].options() if algo in ALGORITHMS else {}
        return algo if field == "name" else (declared[field].default if field in declared else None)
    info = SECTIONS[section].model_fields[field]
    return info.default_factory() if info.default_factory is not None else info.default


def run_identity(values: dict[str, Any]) -> dict[str, Any]:
    """The identity of the run whose resolved config is ``values`` (by flag name): every field but
    those of :data:`LAUNCH_FIELDS`, and with worker groups, but those of :data:`LAYOUT_FIELDS`."""
    dropped = LAUNCH_FIELDS | (LAYOUT_FIELDS if values.get("groups") is not None else frozenset())
    return {key: value for key, value in values.items() if key not in dropped}


def resolve(config: TrainConfig) -> TrainConfig:
    """``config`` checked against this machine and completed for it; raise a one-line ValueError.

    Checks the model's and the data's files, the tokenizer, the GPUs and the memory, and fills in
    ``device: auto``, the worker-group layout (under torchrun: from its environment) and Muon's
    learning rate. The result remembers ``config``: its ``to_yaml`` is ``config``'s, its
    ``resolved_yaml`` what this filled in.
    """
    try:
        return completed(config)
    except ValueError as error:
        raise ValueError(flagged(str(error))) from None


def completed(config: TrainConfig) -> TrainConfig:
    """:func:`resolve`'s work; its errors start with the name of the field at fault."""
    resolved = config.model_copy(deep=True)
    resolved._given = config._given or config
    run, layout = resolved.run, resolved.layout
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no GPU is available")
    if run.device == "auto":
        run.device = "cuda" if torch.cuda.is_available() else "cpu"
    if under_torchrun():
        world_size = int(os.environ["WORLD_SIZE"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if "workers" in layout.model_fields_set and layout.workers != world_size:
            raise ValueError(f"workers: {layout.workers} differs from torchrun's WORLD_SIZE {world_size}")
        layout.workers = world_size
        if layout.groups is None and layout.group_size is None and 1 < local_world_size < world_size:
            layout.group_size = local_world_size  # the nodes are the groups
    try:
        spec = model_spec(resolved.model.name)  # an hf: model's: refuses a missing directory or a config no causal LM's
    except ValueError as error:
        raise ValueError(f"model: {error}") from None
    source = parse_data_spec(resolved.data.source)
    if resolved.data.tokenizer is not None:
        check_tokenizer_source(resolved.data.tokenizer)
    data_task = "image" if source.kind in IMAGE_SOURCES else "lm"
    model = resolved.model.name
    if data_task != spec.task:
        raise ValueError(f"data: {resolved.data.source} holds {data_task} data; {model} needs {spec.task} data")
    if spec.vocab_size is not None:
        check_vocabulary(resolved, spec.vocab_size)
    if spec.max_positions is not None and resolved.data.seq_len > spec.max_positions:
        raise ValueError(f"seq_len: {resolved.data.seq_len} exceeds {model}'s {spec.max_positions} positions")
    if source.kind == "text-files":
        check_text_corpus(resolved.data.source, source.paths, resolved.data.seq_len, layout.workers,
                          resolved.data.tokenizer is None)
    if spec.task == "lm" and resolved.data.tokenizer is None:
        check_logits_memory(resolved)
    if resolved.live:
        check_live(resolved)
    resolve_groups(resolved)
    resolve_conditions(resolved)
    resolve_optimizer(resolved, spec.task)
    algorithm = ALGORITHMS[resolved.algo]
    algorithm.check_workers("workers", layout.workers)
    if resolved.grouped:
        algorithm.check_workers("groups", layout.groups, "groups")
    simulated = run.backend == "sim"
    if simulated and under_torchrun():
        raise ValueError("backend: sim runs every worker in one process; run it without torchrun")
    if run.device == "cuda" and layout.workers > torch.cuda.device_count() and not (under_torchrun() or simulated):
        raise ValueError(f"workers: {layout.workers} exceeds the {torch.cuda.device_count()} GPUs here")
    return resolved


def check_vocabulary(config: TrainConfig, model_vocab: int) -> None:
    """The data's tokenizer must fit the vocabulary of a model that has its own (an ``hf:`` one)."""
    data = config.data
    if data.tokenizer is not None:
        tokens = load_tokenizer(data.tokenizer).vocab_size
        if tokens > model_vocab:
            raise ValueError(f"tokenizer: its {tokens} tokens exceed {config.model.name}'s vocab_size {model_vocab}")
    elif data.vocab_size > model_vocab:
        raise ValueError(f"vocab_size: the trained BPE's up to {data.vocab_size} tokens exceed {config.model.name}'s "
                         f"vocab_size {model_vocab}; pass --vocab-size {model_vocab} or less")


def resolve_optimizer(config: TrainConfig, task: str) -> None:
    """Muon for language models (whose hidden layers are matrices) whose parameters are not FSDP
    shards, with torch.optim.Muon; its learning rate defaults to :data:`MUON_LR`."""
    optimizer = config.optimizer
    if optimizer.name != "muon":
        return
    if not hasattr(torch.optim, "Muon"):
        raise ValueError(f"optimizer: muon needs torch.optim.Muon (torch >= 2.9), not in torch {torch.__version__}")
    if task != "lm":
        raise ValueError(f"optimizer: muon is for language models; {config.model.name}'s hidden layers are "
                         "convolutions")
    if config.layout.inner == "fsdp":
        raise ValueError("optimizer: muon orthogonalises whole matrices, not FSDP shards; use --inner ddp")
    optimizer.muon_lr = optimizer.muon_lr or MUON_LR


def check_logits_memory(config: TrainConfig) -> None:
    """Refuse a micro-batch that obviously cannot fit: its logits alone (float32, at least
    MIN_VOCABULARY per token with lowcomm's byte-level BPE), for every worker sharing this
    machine's memory (a GPU's, with cuda: one worker each, or all of them simulated)."""
    batch_size, seq_len, workers = config.data.batch_size, config.data.seq_len, config.layout.workers
    per_worker = batch_size * seq_len * MIN_VOCABULARY * 4
    if config.run.device == "cuda":
        sharing = workers if config.run.backend == "sim" else 1
        memory, where = torch.cuda.get_device_properties(0).total_memory, "its GPU's"
    else:
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", workers)) if under_torchrun() else workers
        memory, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"
    if per_worker * sharing > memory:
        raise ValueError(
            f"batch_size: {batch_size} sequences of {seq_len} tokens need {per_worker / 1e9:.3g} GB per "
            f"worker for their logits alone, {per_worker * sharing / 1e9:.3g} GB for the {sharing} worker(s) "
            f"sharing {where} {memory / 1e9:.3g} GB of memory; use a smaller --batch-size (and --grad-accum "
            "to keep the tokens per step)")


def check_live(config: TrainConfig) -> None:
    """Live fault tolerance: torchft installed, worker groups (of one process by default), an
    algorithm whose traffic between groups is blocking and belongs to training steps, a sound
    quorum size."""
    from lowcomm.communication.live import require_torchft

    require_torchft()
    layout, faults, run, network = config.layout, config.fault_tolerance, config.run, config.network
    if not ALGORITHMS[config.algo].runs_live:
        live = ", ".join(name for name, cls in ALGORITHMS.items() if cls.runs_live)
        raise ValueError(f"fault_tolerance: live supports {live}, not {config.algo}")
    if layout.groups is None:
        raise ValueError("fault_tolerance: live needs --groups K (the worker groups that may fail and rejoin)")
    if layout.group_size is None and "workers" not in layout.model_fields_set:
        layout.group_size = 1
    if run.backend != "dist" or network.mode != "none" or under_torchrun():
        raise ValueError("fault_tolerance: live runs on lowcomm's own launcher with the real network")
    options = config.algorithm_options()
    for name in ("overlap_steps", "compress"):
        if options.get(name) not in (None, 0, "none"):
            raise ValueError(f"{name}: live fault tolerance needs blocking uncompressed outer steps")
    for name in ("stop_at_loss", "stop_after_s"):
        if getattr(run, name) is not None:
            raise ValueError(f"{name}: a live run's groups cannot agree on an early stop; give --steps only")
    if faults.min_groups > layout.groups:
        raise ValueError(f"min_groups: {faults.min_groups} exceeds the {layout.groups} groups")
    if (faults.lighthouse is None) != (faults.live_group is None):
        raise ValueError("lighthouse: give --lighthouse HOST:PORT and --live-group G together (several "
                         "machines), or neither (one machine, which starts its own lighthouse)")
    if faults.lighthouse is not None and network.bandwidth != "unlimited":
        raise ValueError("bandwidth: live groups behind limited links run on one machine, not with --lighthouse")
    if faults.live_group is not None and faults.live_group >= layout.groups:
        raise ValueError(f"live_group: {faults.live_group} is not one of the {layout.groups} groups")
    if faults.lighthouse is not None:
        host, _, port = faults.lighthouse.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"lighthouse: expected HOST:PORT, got {faults.lighthouse!r}")


def resolve_conditions(config: TrainConfig) -> None:
    """One speed per worker (with groups: per group); the CPU share in cores, where this machine can give it."""
    conditions, layout = config.conditions, config.layout
    speeds = conditions.worker_speeds
    count, unit = (layout.groups, "group") if config.grouped else (layout.workers, "worker")
    if speeds is not None and len(speeds) != count:
        raise ValueError(f"worker_speeds: {len(speeds)} speeds for {count} {unit}s; give one per {unit}")
    if conditions.cpu_share is not None:
        local_workers = layout.workers
        if under_torchrun():
            local_workers = int(os.environ.get("LOCAL_WORLD_SIZE", layout.workers))
        elif config.fault_tolerance.live_group is not None:  # this machine runs one live group
            local_workers = layout.group_size
        conditions.cpu_share = resolve_share(conditions.cpu_share, local_workers)


def resolve_groups(config: TrainConfig) -> None:
    """Fill in the group layout: any two of workers, groups and group_size give the third.

    Given only one of groups and group_size, the workers (default 2) must be a multiple of it.
    Neither given: no groups, and no inner. A group size of 1 without groups is no groups either.
    """
    layout = config.layout
    if layout.groups is None and layout.group_size in (None, 1):
        if layout.inner is not None:
            raise ValueError("inner: only worker groups have an inside; give --groups or --group-size")
        layout.group_size = None
        return
    workers = f"the {layout.workers} workers" + (" torchrun started" if under_torchrun() else "")
    if layout.groups is not None and layout.group_size is not None:
        processes = layout.groups * layout.group_size
        if "workers" in layout.model_fields_set and layout.workers != processes:
            raise ValueError(f"groups: {layout.groups} groups of --group-size {layout.group_size} are {processes} "
                             f"processes, not {workers}")
        layout.workers = processes
    else:
        name, given = ("groups", layout.groups) if layout.group_size is None else ("group_size", layout.group_size)
        if layout.workers % given:
            raise ValueError(f"{name}: {given} does not divide {workers} into equal groups")
        other = layout.workers // given
        layout.groups, layout.group_size = (given, other) if name == "groups" else (other, given)
    if config.run.backend == "sim":
        raise ValueError("backend: sim simulates single workers, not worker groups; use --backend dist")
    layout.inner = layout.inner or "ddp"
    if layout.inner == "fsdp" and (problem := fsdp_problem(config.model.name)) is not None:
        raise ValueError(f"inner: FSDP cannot shard {config.model.name}: {problem}; use --inner ddp")


def fsdp_problem(model: str) -> str | None:
    """Why FSDP2 inside a group cannot train ``model`` (None if it can), from its modules on the meta device.

    FSDP2 shards parameters only: buffers that the forward pass updates (BatchNorm's running
    statistics) would drift apart on the ranks of a group, where DistributedDataParallel broadcasts them.
    """
    spec = model_spec(model)
    with torch.device("meta"):
        module = build_model(model, **({"vocab_size": spec.vocab_size or 257} if spec.task == "lm" else {}))
    if any(getattr(m, "track_running_stats", False) for m in module.modules()):
        return "its BatchNorm running statistics are buffers FSDP2 neither shards nor keeps equal across a group"
    return None


def under_torchrun() -> bool:
    """True inside a worker started by torchrun (or any torch elastic agent)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def as_flags(values: dict[str, Any]) -> list[str]:
    """``{"sync_interval": 16, "overwrite": True}`` as ``["--sync-interval", "16", "--overwrite"]``."""
    arguments = []
    for name, value in values.items():
        arguments += [flag(name)] if value is True else [flag(name), str(value)]
    return arguments


def problem_flag(location: tuple[Any, ...]) -> str | None:
    """The flag of the field at a pydantic error's ``location`` (None above the fields)."""
    if len(location) == 3 and location[0] == "algorithm":
        location = ("algorithm", location[2])  # the algorithm's name, its section's tag, comes between
    return FIELD_FLAGS.get(location) if len(location) == 2 else None


def one_line_error(error: ValidationError) -> str:
    """The first problem pydantic found, as ``--flag: message (got value)``."""
    problem = error.errors()[0]
    location = tuple(problem["loc"])
    if problem["type"] == "extra_forbidden":
        if len(location) == 3 and location[0] == "algorithm":
            return f"{flag(location[2])}: {location[1]} does not take it"
        return f"--config: unknown key {'.'.join(str(part) for part in location)!r}"
    name = problem_flag(location)
    return flagged(problem_text(problem, "") if name is None else f"{name}: {problem_text(problem, name)}")


def flagged(message: str) -> str:
    """``name: message`` as ``--name: message``."""
    name, _, message = message.partition(": ")
    return f"{flag(name)}: {message}"


def read_yaml(path: Path) -> dict[str, Any]:
    """The config in a ``--config`` file, in sections (see :func:`nest`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--config: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--config: {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    values = yaml_mapping(text, f"--config: {path}")
    for name in FLAG_ONLY:
        if values.get("run", {}).pop(name, False) is not False:  # false: recorded by an older lowcomm
            raise ValueError(f"--config: {path} sets {name}; only the flag --{name} may")
    return values


def yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """The config in YAML ``text``, in sections (``source`` names it in errors)."""
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source} is not valid YAML: {str(error).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise ValueError(f"{source} must hold a mapping of option names to values")
    return nest(values)


def preset_names() -> list[str]:
    """The presets shipped in :mod:`lowcomm.presets`."""
    return sorted(f.name.removesuffix(".yaml") for f in resources.files("lowcomm.presets").iterdir()
                  if f.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    """The config of the preset ``name``, in sections."""
    if name not in preset_names():
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    text = resources.files("lowcomm.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml_mapping(text, f"--preset: {name}")


def recipe_for(preset: dict[str, Any], algo: Any) -> dict[str, Any]:
    """A preset's config for ``algo``: its algorithm options go only to an algorithm that takes them."""
    if algo not in ALGORITHMS or "algorithm" not in preset:
        return preset
    declared = ALGORITHMS[algo].options()
    return {**preset, "algorithm": {key: value for key, value in preset["algorithm"].items()
                                    if key == "name" or key in declared}}


def algorithm_flags(algo: str, values: dict[str, Any]) -> dict[str, Any]:
    """Flags ``values`` without the algorithm options that ``algo`` does not declare."""
    declared = ALGORITHMS[algo].options()
    return {key: value for key, value in values.items() if key not in ALGORITHM_PARAMETERS or key in declared}


def load_config(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None, preset: str | None = None
) -> TrainConfig:
    """Defaults, then the preset, then the YAML file, then ``overrides`` (the flags, by flag name),
    validated without looking at the machine (see :func:`resolve`); raise a one-line ValueError.

    Without a preset, a file or an algorithm, the :data:`QUICK_START` values come before the flags.
    """
    flags = nest(overrides or {})
    chosen = read_yaml(config_file) if config_file is not None else {}
    if preset is not None:
        recipe = read_preset(preset)
        algo = merge(recipe, chosen, flags).get("algorithm", {}).get("name", DEFAULT_ALGORITHM)
        first = recipe_for(recipe, algo)
    else:
        first = {} if "name" in flags.get("algorithm", {}) or config_file is not None else nest(QUICK_START)
    try:
        return TrainConfig.model_validate(merge(first, chosen, flags))
    except ValidationError as error:
        raise ValueError(one_line_error(error)) from None
