"""The models lowcomm trains, by name: its own, and ``hf:DIR`` for any local ``transformers`` causal LM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from lowcomm.models.gpt import GPT, GPTConfig
from lowcomm.models.gpt_neo import GPT_NEO_SHAPES, gpt_neo_config
from lowcomm.models.hf_gpt_neo import build_hf_gpt_neo
from lowcomm.models.hf_local import build_hf_causal_lm, config_limits, is_hf_name, local_config
from lowcomm.models.resnet import ResNet18

IMPLEMENTATIONS = ("lowcomm", "hf")


@dataclass(frozen=True)
class ModelSpec:
    """What a training loop must know about a model before building it."""

    name: str
    task: Literal["lm", "image"]
    max_positions: int | None  # longest token sequence; None for image models
    vocab_size: int | None = None  # an hf: model's own vocabulary; None: sized to the data


SPECS = {
    "gpt-tiny": ModelSpec("gpt-tiny", "lm", GPTConfig.max_positions),
    **{name: ModelSpec(name, "lm", shape.max_positions) for name, shape in GPT_NEO_SHAPES.items()},
    "resnet18-cifar": ModelSpec("resnet18-cifar", "image", None),
}
MODEL_NAMES: tuple[str, ...] = tuple(SPECS)


def model_spec(name: str) -> ModelSpec:
    """The spec of a lowcomm model or of an ``hf:`` one (read from its config); ValueError if none."""
    if is_hf_name(name):
        return ModelSpec(name, "lm", *config_limits(name, local_config(name)))
    if name not in SPECS:
        raise ValueError(f"name: unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return SPECS[name]


def build_model(
    name: str,
    *,
    vocab_size: int | None = None,
    num_classes: int = 10,
    implementation: Literal["lowcomm", "hf"] = "lowcomm",
) -> nn.Module:
    """A freshly initialised model.

    Language models need ``vocab_size`` and ignore ``num_classes``; image models take
    ``num_classes`` and no ``vocab_size``. ``implementation="hf"`` (gpt-neo only) builds
    ``transformers``' GPTNeoForCausalLM instead of lowcomm's own equivalent code. An ``hf:`` model
    (:mod:`lowcomm.models.hf_local`) is ``transformers``' already and keeps its own vocabulary, which
    ``vocab_size`` (the data's) must not exceed.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation: must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if is_hf_name(name):
        if vocab_size is None:
            raise ValueError(f"vocab_size: language model {name!r} needs one")
        return build_hf_causal_lm(name, vocab_size)
    spec = model_spec(name)
    if implementation == "hf" and name not in GPT_NEO_SHAPES:
        raise ValueError(f"implementation: 'hf' exists only for gpt-neo models, not {name!r}")
    if spec.task == "image":
        if vocab_size is not None:
            raise ValueError(f"vocab_size: image model {name!r} takes none, got {vocab_size}")
        return ResNet18(num_classes)
    if vocab_size is None:
        raise ValueError(f"vocab_size: language model {name!r} needs one")
    if name == "gpt-tiny":
        return GPT(GPTConfig(vocab_size=vocab_size))
    shape = GPT_NEO_SHAPES[name]
    if implementation == "hf":
        return build_hf_gpt_neo(shape, vocab_size)
    return GPT(gpt_neo_config(shape, vocab_size))
