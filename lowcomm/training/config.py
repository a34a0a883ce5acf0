"""The resolved configuration of one training run: defaults, YAML file and flags, validated at once.

Every field is a ``lowcomm train`` flag (``--field-name``) and a key of the ``--config`` YAML file
and of a ``--preset`` (a YAML file shipped in :mod:`lowcomm.presets`). The fields of
:data:`ALGORITHM_PARAMETERS` (``sync_interval``, ``outer_lr``, ...) are the options the algorithm
classes declare (:meth:`lowcomm.algorithms.Strategy.options`): each defaults to the chosen
algorithm's declared default, which follows its paper, is checked by its declared rule, and is an
error for an algorithm that does not declare it.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from lowcomm.algorithms import ALGORITHMS
from lowcomm.communication.network_model import parse_rate
from lowcomm.data.spec import check_text_corpus, parse_data_spec
from lowcomm.data.tokenizer import check_tokenizer_source, load_tokenizer
from lowcomm.models import GPT_NEO_SHAPES, MODEL_NAMES, build_model, model_spec
from lowcomm.models.hf_local import absolute_hf_name, is_hf_name


def reject_bool(value: Any) -> Any:
    """YAML's ``true`` is not a count: pydantic would read it as 1."""
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


def reject_non_finite(value: Any) -> Any:
    """NaN and infinity pass pydantic's float bounds unreported (or reported as out of range)."""
    reject_bool(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    if not math.isfinite(number):
        raise ValueError("Input should be a finite number")
    return value


Int = Annotated[int, BeforeValidator(reject_bool)]
Float = Annotated[float, BeforeValidator(reject_non_finite)]

MIN_VOCABULARY = 257
"""The fewest tokens lowcomm's byte-level BPE has: the 256 bytes and end-of-text."""
IMAGE_SOURCES = frozenset({"synthetic-images", "image-folder"})

ALGORITHM_PARAMETERS = tuple(dict.fromkeys(
    name for algorithm in ALGORITHMS.values() for name, option in algorithm.options().items() if option.flag
))
"""The algorithms' options that are ``lowcomm train`` flags, each a field of :class:`TrainConfig`."""

QUICK_START = {"outer_lr": 0.7}
"""What the embedded default run (no ``--config``, no ``--algo``) changes in PALSGD's paper defaults.

With the paper's outer learning rate of 0.1, z trails the workers through a run this short (eval loss
0.77 after the default 384 steps, against 0.64 with DiLoCo's 0.7 and 0.64 for DDP).
"""

MUON_LR = 1e-3
"""torch.optim.Muon's default learning rate, ``--muon-lr``'s."""

LAUNCH_FIELDS = frozenset(
    {"out", "resume", "overwrite", "max_restarts", "hang_timeout", "keep_checkpoints", "bind_all", "cache_dir",
     "network", "bandwidth", "latency", "min_groups", "lighthouse", "live_group"}
)
"""Fields that say how a run is launched, not what it computes: they may change when it resumes."""

FLAG_ONLY = ("resume", "overwrite")
"""Options only a flag may give: a YAML file (a run's own ``config.yaml``, or one from someone else)
must not make lowcomm delete or take over a directory."""

LAYOUT_FIELDS = frozenset({"workers", "groups", "group_size"})
"""A run with worker groups may resume as K' x G' instead of K x G: its checkpoints reshard."""


def default_out() -> Path:
    return Path("lowcomm-runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lowcomm"


class TrainConfig(BaseModel):
    """Everything ``lowcomm train`` needs; the defaults are the embedded quick-start run."""

    model_config = ConfigDict(extra="forbid")

    algo: str = Field("palsgd", description=f"one of {', '.join(ALGORITHMS)}")
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
    steps: Int = Field(384, ge=1, le=10**9, description="training steps per worker")
    out: Path = Field(default_factory=default_out, description="run directory (default lowcomm-runs/<time>)")
    seed: Int = Field(0, ge=0, lt=2**32, description="seeds the model, the data order and the coins")
    model: str = Field(
        "gpt-tiny", description=f"one of {', '.join(MODEL_NAMES)}, or hf:DIR: any transformers causal LM from a "
        "local directory (its weights, or a config.json alone: randomly initialised), never from a hub"
    )
    model_impl: Literal["lowcomm", "hf"] = Field("lowcomm", description="lowcomm's own modules or HF transformers")
    data: str = Field(
        "synthetic-stories", description="synthetic-stories, synthetic-images, PATH, glob or hf:NAME[:SPLIT]"
    )
    tokenizer: str | None = Field(None, description="HF tokenizer name or path (default: a BPE trained on the data)")
    vocab_size: Int = Field(2048, ge=257, le=2**20, description="vocabulary of the trained BPE")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="where tokenizers and datasets are cached")
    lr: Float = Field(3e-3, gt=0, le=10, description="peak inner learning rate (of AdamW, SGD, or muon's AdamW part)")
    lr_warmup: Int = Field(32, ge=0, le=10**9, description="steps of linear learning-rate warm-up")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after the warm-up: cosine decay to lr * min_lr_ratio, or constant"
    )
    min_lr_ratio: Float = Field(0.1, ge=0, le=1, description="cosine decay ends at lr * this")
    weight_decay: Float = Field(0.01, ge=0, le=10, description="weight decay (decoupled; for sgd an L2 term)")
    optimizer: Literal["adamw", "muon", "sgd"] = Field(
        "adamw", description="inner optimizer: adamw; muon (torch.optim.Muon for the hidden weight matrices, "
        "AdamW for embeddings, output head, norms and biases, as MuLoCo); sgd (SGD with momentum 0.9)"
    )
    muon_lr: Float | None = Field(
        None, gt=0, le=10, description=f"muon: Muon's peak learning rate (default {MUON_LR}, torch.optim.Muon's)"
    )
    max_grad_norm: Float | None = Field(1.0, gt=0, description="gradient clipping norm")
    batch_size: Int = Field(16, ge=1, le=2**16, description="sequences (or images) per micro-batch per worker")
    grad_accum: Int = Field(1, ge=1, le=2**12, description="micro-batches per step")
    seq_len: Int = Field(64, ge=1, le=2**20, description="tokens per sequence")
    sync_interval: Int | None = Field(None, ge=1, le=10**9, description="H: steps between synchronisations")
    warmup_steps: Int | None = Field(None, ge=0, le=10**9, description="S: synchronous steps before local ones")
    pseudo_sync_prob: Float | None = Field(None, ge=0, lt=1, description="PALSGD's p, in [0, 1)")
    eta: Float | None = Field(None, gt=0, le=10**6, description="PALSGD's pull strength")
    outer_lr: Float | None = Field(None, gt=0, le=10, description="outer learning rate (NoLoCo's alpha)")
    outer_momentum: Float | None = Field(None, description="outer momentum (NoLoCo's mu), in [0, 1)")
    outer_device: Literal["cpu"] | None = Field(None, description="keep z and the outer optimizer in (pinned) CPU memory")
    overlap_steps: Int | None = Field(None, ge=0, le=10**9, description="tau: inner steps overlapping the outer all-reduce")
    merge_alpha: Float | None = Field(
        None, ge=0, le=1, description="weight of the local model in the merge after an overlap (default 0.5)"
    )
    compress: str | None = Field(
        None, description="what the averaged values travel as: none, bf16, int8, int4 or topk:FRACTION"
    )
    num_fragments: Int | None = Field(None, ge=1, le=10**6, description="Streaming DiLoCo's fragment count P")
    fragment_pattern: Literal["sequential", "strided"] | None = Field(None, description="how fragments split the model")
    outer_repeats: Int | None = Field(
        None, description="PALSGD: outer-optimizer steps per outer step, the others on a zero pseudo-gradient "
        "(16: the official code's is_intended_impl False)"
    )
    diagnostics: bool | None = Field(
        None, description="DiLoCo, PALSGD, Streaming DiLoCo: also log the workers' spread at each outer step "
        "(one more blocking all-reduce)"
    )
    eval_every: Int = Field(64, ge=1, le=10**9, description="steps between evaluations of the global model")
    eval_batches: Int = Field(8, ge=1, le=2**16, description="held-out batches per evaluation")
    stop_at_loss: Float | None = Field(
        None, gt=0, description="stop at the first evaluation whose eval loss is at most this (before --steps)"
    )
    stop_after_s: Float | None = Field(
        None, gt=0, description="stop at the first step that ends after this many seconds of worker 0's clock, "
        "and evaluate there (before --steps)"
    )
    checkpoint_every: Int = Field(128, ge=1, le=10**9, description="steps between checkpoints")
    keep_checkpoints: Int | None = Field(None, ge=1, le=10**6, description="keep only the newest K checkpoints")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", validate_default=True, description="cpu (gloo), cuda (nccl, one GPU per local rank)"
    )
    resume: bool = Field(False, description="continue the run in --out from its newest complete checkpoint")
    overwrite: bool = Field(False, description="first delete the files of the lowcomm run in --out (nothing else)")
    max_restarts: Int = Field(0, ge=0, le=10**6, description="times the launcher may restart a failed group")
    hang_timeout: Float = Field(
        300.0, gt=0, le=10**6, description="seconds a collective may wait before the group fails"
    )
    bind_all: bool = Field(False, description="listen on all interfaces, not only 127.0.0.1")
    fault_tolerance: Literal["restart", "live"] = Field(
        "restart", description="restart: a failure restarts every worker from a checkpoint; live: the other "
        "worker groups train on and a restarted group rejoins, healed from a peer (needs lowcomm[ft])"
    )
    min_groups: Int = Field(1, ge=1, le=1024, description="live: fewer live groups than this stop the run")
    lighthouse: str | None = Field(
        None, description="live, several machines: the torchft lighthouse's HOST:PORT (default: started here)"
    )
    live_group: Int | None = Field(
        None, ge=0, le=1023, description="live with --lighthouse: the one group this machine runs (0..K-1)"
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
    network: Literal["none", "model"] = Field(
        "none", description="none: the real network (limited to --bandwidth in namespaces); model: modelled delays"
    )
    bandwidth: str = Field(
        "unlimited", description="link rate per worker (per group with --groups), tc-style: 100mbit, 1gbit, unlimited"
    )
    latency: Float = Field(0.0, ge=0, le=10, description="seconds per message (--network model)")

    @field_validator("algo")
    @classmethod
    def known_algorithm(cls, algo: str) -> str:
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
        return algo

    @field_validator("model")
    @classmethod
    def known_model(cls, model: str) -> str:
        if is_hf_name(model):
            model = absolute_hf_name(model)
            model_spec(model)  # refuses a missing directory or a config that is no causal LM's
            return model
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
        return model

    @field_validator("data")
    @classmethod
    def readable_data(cls, data: str) -> str:
        parse_data_spec(data)
        return data

    @field_validator("tokenizer")
    @classmethod
    def existing_tokenizer(cls, tokenizer: str | None) -> str | None:
        if tokenizer is not None:
            check_tokenizer_source(tokenizer)
        return tokenizer

    @field_validator("bandwidth")
    @classmethod
    def valid_rate(cls, bandwidth: str) -> str:
        parse_rate(bandwidth)
        return bandwidth

    @field_validator("device")
    @classmethod
    def available_device(cls, device: str) -> str:
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("cuda requested but no GPU is available")
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    @model_validator(mode="after")
    def consistent(self) -> TrainConfig:
        spec = model_spec(self.model)
        source = parse_data_spec(self.data)
        data_task = "image" if source.kind in IMAGE_SOURCES else "lm"
        if data_task != spec.task:
            raise ValueError(f"data: {self.data} holds {data_task} data; {self.model} needs {spec.task} data")
        if self.model_impl == "hf" and self.model not in GPT_NEO_SHAPES:
            raise ValueError(f"model_impl: hf exists only for {', '.join(GPT_NEO_SHAPES)}")
        if spec.vocab_size is not None:
            self.check_vocabulary(spec.vocab_size)
        max_positions = spec.max_positions
        if max_positions is not None and self.seq_len > max_positions:
            raise ValueError(f"seq_len: {self.seq_len} exceeds {self.model}'s {max_positions} positions")
        if source.kind == "text-files":
            check_text_corpus(self.data, source.paths, self.seq_len, self.workers, self.tokenizer is None)
        if spec.task == "lm" and self.tokenizer is None:
            self.check_logits_memory()
        if self.fault_tolerance == "live":
            self.check_live()
        elif given := [name for name, unset in (("min_groups", 1), ("lighthouse", None), ("live_group", None))
                       if getattr(self, name) != unset]:
            raise ValueError(f"{given[0]}: only --fault-tolerance live takes it")
        self.resolve_groups()
        self.check_optimizer(spec.task)
        algorithm = ALGORITHMS[self.algo]
        algorithm.check_workers("workers", self.workers)
        if self.grouped:
            algorithm.check_workers("groups", self.groups, "groups")
        if self.backend == "sim" and under_torchrun():
            raise ValueError("backend: sim runs every worker in one process; run it without torchrun")
        if self.backend == "sim" and self.max_restarts > 0:
            raise ValueError("max_restarts: the simulation does not restart workers")
        simulated = self.backend == "sim"
        if self.sim_passes != "auto" and not simulated:
            raise ValueError("sim_passes: only --backend sim takes it")
        if self.device == "cuda" and self.workers > torch.cuda.device_count() and not (under_torchrun() or simulated):
            raise ValueError(f"workers: {self.workers} exceeds the {torch.cuda.device_count()} GPUs here")
        self.fill_algorithm_defaults()
        for lr in {self.lr, self.muon_lr or self.lr}:
            algorithm.check_options(lr, self.algorithm_kwargs())
        return self

    def check_vocabulary(self, model_vocab: int) -> None:
        """The data's tokenizer must fit the vocabulary of a model that has its own (an ``hf:`` one)."""
        if self.tokenizer is not None:
            tokens = load_tokenizer(self.tokenizer).vocab_size
            if tokens > model_vocab:
                raise ValueError(f"tokenizer: its {tokens} tokens exceed {self.model}'s vocab_size {model_vocab}")
        elif self.vocab_size > model_vocab:
            raise ValueError(f"vocab_size: the trained BPE's up to {self.vocab_size} tokens exceed {self.model}'s "
                             f"vocab_size {model_vocab}; pass --vocab-size {model_vocab} or less")

    def check_optimizer(self, task: str) -> None:
        """Muon's learning rate only with muon (default :data:`MUON_LR`); muon for language models
        (whose hidden layers are matrices) whose parameters are not FSDP shards."""
        if self.optimizer != "muon":
            if self.muon_lr is not None:
                raise ValueError("muon_lr: only --optimizer muon takes it")
            return
        if not hasattr(torch.optim, "Muon"):
            raise ValueError(f"optimizer: muon needs torch.optim.Muon (torch >= 2.9), not in torch {torch.__version__}")
        if task != "lm":
            raise ValueError(f"optimizer: muon is for language models; {self.model}'s hidden layers are convolutions")
        if self.inner == "fsdp":
            raise ValueError("optimizer: muon orthogonalises whole matrices, not FSDP shards; use --inner ddp")
        self.muon_lr = self.muon_lr or MUON_LR

    def check_logits_memory(self) -> None:
        """Refuse a micro-batch that obviously cannot fit: its logits alone (float32, at least
        MIN_VOCABULARY per token with lowcomm's byte-level BPE), for every worker sharing this
        machine's memory (a GPU's, with cuda: one worker each, or all of them simulated)."""
        per_worker = self.batch_size * self.seq_len * MIN_VOCABULARY * 4
        if self.device == "cuda":
            sharing = self.workers if self.backend == "sim" else 1
            memory, where = torch.cuda.get_device_properties(0).total_memory, "its GPU's"
        else:
            sharing = int(os.environ.get("LOCAL_WORLD_SIZE", self.workers)) if under_torchrun() else self.workers
            memory, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"
        if per_worker * sharing > memory:
            raise ValueError(
                f"batch_size: {self.batch_size} sequences of {self.seq_len} tokens need {per_worker / 1e9:.3g} GB per "
                f"worker for their logits alone, {per_worker * sharing / 1e9:.3g} GB for the {sharing} worker(s) "
                f"sharing {where} {memory / 1e9:.3g} GB of memory; use a smaller --batch-size (and --grad-accum "
                "to keep the tokens per step)")

    def check_live(self) -> None:
        """Live fault tolerance: torchft installed, worker groups (of one process by default), an
        algorithm whose traffic between groups is blocking and belongs to training steps, a sound
        quorum size."""
        from lowcomm.communication.live import require_torchft

        require_torchft()
        if not ALGORITHMS[self.algo].runs_live:
            live = ", ".join(name for name, cls in ALGORITHMS.items() if cls.runs_live)
            raise ValueError(f"fault_tolerance: live supports {live}, not {self.algo}")
        if self.groups is None:
            raise ValueError("fault_tolerance: live needs --groups K (the worker groups that may fail and rejoin)")
        if self.group_size is None and "workers" not in self.model_fields_set:
            self.group_size = 1
        if self.backend != "dist" or self.network != "none" or self.bandwidth != "unlimited" or under_torchrun():
            raise ValueError("fault_tolerance: live runs on lowcomm's own launcher with the real, unlimited network")
        for name in ("overlap_steps", "compress"):
            if getattr(self, name) not in (None, 0, "none"):
                raise ValueError(f"{name}: live fault tolerance needs blocking uncompressed outer steps")
        for name in ("stop_at_loss", "stop_after_s"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}: a live run's groups cannot agree on an early stop; give --steps only")
        if self.min_groups > self.groups:
            raise ValueError(f"min_groups: {self.min_groups} exceeds the {self.groups} groups")
        if (self.lighthouse is None) != (self.live_group is None):
            raise ValueError("lighthouse: give --lighthouse HOST:PORT and --live-group G together (several "
                             "machines), or neither (one machine, which starts its own lighthouse)")
        if self.live_group is not None and self.live_group >= self.groups:
            raise ValueError(f"live_group: {self.live_group} is not one of the {self.groups} groups")
        if self.lighthouse is not None:
            host, _, port = self.lighthouse.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"lighthouse: expected HOST:PORT, got {self.lighthouse!r}")

    @property
    def live(self) -> bool:
        return self.fault_tolerance == "live"

    @property
    def grouped(self) -> bool:
        """Whether the run has worker groups (a mesh); without them every process is a worker."""
        return self.groups is not None

    def resolve_groups(self) -> None:
        """Fill in the group layout: any two of workers, groups and group_size give the third.

        Given only one of groups and group_size, the workers (default 2) must be a multiple of it.
        Neither given: no groups, and no inner. A group size of 1 without groups is no groups either.
        """
        if self.groups is None and self.group_size in (None, 1):
            if self.inner is not None:
                raise ValueError("inner: only worker groups have an inside; give --groups or --group-size")
            self.group_size = None
            return
        workers = f"the {self.workers} workers" + (" torchrun started" if under_torchrun() else "")
        if self.groups is not None and self.group_size is not None:
            layout = self.groups * self.group_size
            if "workers" in self.model_fields_set and self.workers != layout:
                raise ValueError(f"groups: {self.groups} groups of --group-size {self.group_size} are {layout} "
                                 f"processes, not {workers}")
            self.workers = layout
        else:
            name, given = ("groups", self.groups) if self.group_size is None else ("group_size", self.group_size)
            if self.workers % given:
                raise ValueError(f"{name}: {given} does not divide {workers} into equal groups")
            other = self.workers // given
            self.groups, self.group_size = (given, other) if name == "groups" else (other, given)
        if self.backend == "sim":
            raise ValueError("backend: sim simulates single workers, not worker groups; use --backend dist")
        self.inner = self.inner or "ddp"
        if self.inner == "fsdp" and (problem := fsdp_problem(self.model)) is not None:
            raise ValueError(f"inner: FSDP cannot shard {self.model}: {problem}; use --inner ddp")

    def fill_algorithm_defaults(self) -> None:
        """Give each option the algorithm declares its default; reject those it does not declare."""
        declared = ALGORITHMS[self.algo].options()
        for name in ALGORITHM_PARAMETERS:
            if name not in declared:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: {self.algo} does not take it")
            elif getattr(self, name) is None:
                setattr(self, name, declared[name].default)

    def algorithm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``ALGORITHMS[algo]`` besides the model and optimizer: its
        declared flags, the run's seed where it declares one, and the clipping."""
        declared = ALGORITHMS[self.algo].options()
        kwargs = {name: getattr(self, name) for name in ALGORITHM_PARAMETERS if name in declared}
        if "seed" in declared:
            kwargs["seed"] = self.seed
        return {**kwargs, "max_grad_norm": self.max_grad_norm}

    def run_identity(self) -> dict[str, Any]:
        """The fields that decide what the run computes (two runs with equal identities are one run)."""
        return run_identity(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        """The config as a run records it: without :data:`FLAG_ONLY`, which no YAML file may set."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude=set(FLAG_ONLY)), sort_keys=False)


def run_identity(values: dict[str, Any]) -> dict[str, Any]:
    """The identity of the run whose resolved config is ``values``: every field but those of
    :data:`LAUNCH_FIELDS`, and with worker groups, but those of :data:`LAYOUT_FIELDS`."""
    dropped = LAUNCH_FIELDS | (LAYOUT_FIELDS if values.get("groups") is not None else frozenset())
    return {key: value for key, value in values.items() if key not in dropped}


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


def one_line_error(error: ValidationError) -> str:
    """The first problem pydantic found, as ``--flag: message (got value)``."""
    problem = error.errors()[0]
    location = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        return f"--config: unknown key {location!r}"
    message = str(problem["ctx"]["error"]) if problem["type"] == "value_error" else problem["msg"]
    message = message.splitlines()[0] if message else problem["type"]
    if not location:
        location, _, message = message.partition(": ")
    message = message.removeprefix(f"{location}: ")
    shown = repr(problem["input"])
    got = "" if problem["type"] == "value_error" or len(shown) > 60 else f" (got {shown})"
    return f"{flag(location)}: {message}{got}"


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a ``--config`` file, keys with dashes or underscores."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"--config: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--config: {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    values = yaml_mapping(text, f"--config: {path}")
    for name in FLAG_ONLY:
        if values.pop(name, False) is not False:  # false: recorded by an older lowcomm, changes nothing
            raise ValueError(f"--config: {path} sets {name}; only the flag --{name} may")
    return values


def yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """The mapping of option names to values in YAML ``text`` (``source`` names it in errors)."""
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source} is not valid YAML: {str(error).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise ValueError(f"{source} must hold a mapping of option names to values")
    return {key.replace("-", "_"): value for key, value in values.items()}


def preset_names() -> list[str]:
    """The presets shipped in :mod:`lowcomm.presets`."""
    return sorted(f.name.removesuffix(".yaml") for f in resources.files("lowcomm.presets").iterdir()
                  if f.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    """The options of the preset ``name``."""
    if name not in preset_names():
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    text = resources.files("lowcomm.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml_mapping(text, f"--preset: {name}")


def recipe_for(preset: dict[str, Any], algo: Any) -> dict[str, Any]:
    """A preset's options for ``algo``: its algorithm options go only to an algorithm that takes them."""
    return algorithm_flags(algo, preset) if algo in ALGORITHMS else preset


def algorithm_flags(algo: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the algorithm options that ``algo`` does not declare."""
    declared = ALGORITHMS[algo].options()
    return {key: value for key, value in values.items() if key not in ALGORITHM_PARAMETERS or key in declared}


def load_config(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None, preset: str | None = None
) -> TrainConfig:
    """Defaults, then the preset, then the YAML file, then ``overrides`` (the flags); raise a
    one-line ValueError.

    Without a preset, a file or an algorithm, the :data:`QUICK_START` values come before the flags.
    Under torchrun the worker count is torchrun's ``WORLD_SIZE``, and with several processes on each
    of several nodes the nodes are the worker groups unless ``groups`` or ``group_size`` says otherwise.
    """
    overrides = overrides or {}
    chosen = read_yaml(config_file) if config_file is not None else {}
    if preset is not None:
        recipe = read_preset(preset)
        algo = {**recipe, **chosen, **overrides}.get("algo", TrainConfig.model_fields["algo"].default)
        values = recipe_for(recipe, algo)
    else:
        values = {} if "algo" in overrides or config_file is not None else dict(QUICK_START)
    values.update(chosen)
    values.update(overrides)
    if under_torchrun():
        world_size = int(os.environ["WORLD_SIZE"])
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if "workers" in values and str(values["workers"]) != str(world_size):
            raise ValueError(f"--workers: {values['workers']} differs from torchrun's WORLD_SIZE {world_size}")
        values["workers"] = world_size
        if values.get("groups") is None and values.get("group_size") is None and 1 < local_world_size < world_size:
            values["group_size"] = local_world_size  # the nodes are the groups
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as error:
        raise ValueError(one_line_error(error)) from None

