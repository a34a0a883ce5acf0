"""GPT-Neo (Black et al., 2021) as a :class:`~lowcomm.models.gpt.GPT`, and loading its HF weights.

GPT-Neo is GPT-2 with layers alternating between global causal attention and local attention over
a sliding window of ``window_size`` tokens, attention logits left unscaled (no 1/sqrt(head_dim)),
and q/k/v projections without bias. Parameter names follow ``transformers``' GPTNeoForCausalLM,
so its state dict loads after dropping the ``transformer.`` prefix and the extra ``attention.``
level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lowcomm.models.gpt import GPT, GPTConfig

HF_MASK_BUFFERS = (".attn.attention.bias", ".attn.attention.masked_bias")


@dataclass(frozen=True)
class GPTNeoShape:
    """Size of a GPT-Neo whose layers alternate global, local, global, local, ..."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    window_size: int
    max_positions: int

    def __post_init__(self) -> None:
        if self.num_layers < 2 or self.num_layers % 2:
            raise ValueError(f"num_layers: must be a positive even number, got {self.num_layers}")


# Positions are cut from GPT-Neo's 2048 to the 300 that training sequences use.
GPT_NEO_SHAPES = {
    "gpt-neo-8m": GPTNeoShape(8, 128, 8, 512, window_size=256, max_positions=300),
    "gpt-neo-125m": GPTNeoShape(12, 768, 12, 3072, window_size=256, max_positions=300),
}


def gpt_neo_config(shape: GPTNeoShape, vocab_size: int) -> GPTConfig:
    """The GPT configuration that reproduces ``transformers``' GPTNeoForCausalLM of this shape."""
    return GPTConfig(
        vocab_size=vocab_size,
        n_layer=shape.num_layers,
        n_head=shape.num_heads,
        n_embd=shape.hidden_size,
        mlp_width=shape.intermediate_size,
        max_positions=shape.max_positions,
        local_layers=tuple(range(1, shape.num_layers, 2)),
        window_size=shape.window_size,
        attention_scale=1.0,
        qkv_bias=False,
    )


def hf_to_lowcomm_name(name: str) -> str:
    """``transformer.h.0.attn.attention.q_proj.weight`` -> ``h.0.attn.q_proj.weight``."""
    return name.removeprefix("transformer.").replace(".attn.attention.", ".attn.")


def load_hf_weights(model: GPT, hf_model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> None:
    """Copy the weights of a ``transformers`` GPTNeoForCausalLM (or its state dict) into ``model``.

    Old checkpoints also store the attention-mask buffers; they hold no weights and are skipped.
    Any other mismatch in names or shapes raises RuntimeError.
    """
    source = hf_model_or_state_dict
    state_dict = source.state_dict() if isinstance(source, nn.Module) else source
    weights = {name: tensor for name, tensor in state_dict.items() if not name.endswith(HF_MASK_BUFFERS)}
    model.load_state_dict({hf_to_lowcomm_name(name): tensor for name, tensor in weights.items()})
