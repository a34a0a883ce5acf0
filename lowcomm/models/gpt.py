"""A small GPT: a decoder-only transformer language model (Radford et al., 2019), nanoGPT style.

Pre-LayerNorm blocks, learned positions, a GELU MLP, tied input/output embeddings and causal
attention through ``F.scaled_dot_product_attention``. Three options (sliding-window "local"
layers, attention without the 1/sqrt(head_dim) scale, bias-free q/k/v) let the same code express
GPT-Neo (Black et al., 2021); see :mod:`lowcomm.models.gpt_neo`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT; the defaults (with any vocabulary) are ``gpt-tiny``.

    Layers listed in ``local_layers`` attend only to the last ``window_size`` tokens, the rest to
    all earlier tokens. ``attention_scale=None`` means the usual 1/sqrt(head_dim).
    """

    vocab_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    mlp_width: int = 256
    max_positions: int = 128
    local_layers: tuple[int, ...] = ()
    window_size: int | None = None
    attention_scale: float | None = None
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "mlp_width", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
        if any(not 0 <= layer < self.n_layer for layer in self.local_layers):
            raise ValueError(f"local_layers: {self.local_layers} must index layers 0..{self.n_layer - 1}")
        if self.local_layers and (self.window_size is None or self.window_size < 1):
            raise ValueError(f"window_size: local layers need one >= 1, got {self.window_size}")

    def window(self, layer: int) -> int | None:
        """How many tokens (itself included) ``layer`` attends to; None for all earlier tokens."""
        return self.window_size if layer in self.local_layers else None


def check_input_ids(input_ids: torch.Tensor, max_positions: int) -> None:
    """Raise ValueError unless ``input_ids`` is [batch, time] with time <= ``max_positions``."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids: expected shape [batch, time], got {tuple(input_ids.shape)}")
    if input_ids.shape[1] > max_positions:
        raise ValueError(f"input_ids: {input_ids.shape[1]} tokens exceed max_positions={max_positions}")


def sliding_window_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean [length, length] mask: query i may attend to key j iff 0 <= i - j < window."""
    position = torch.arange(length, device=device)
    distance = position[:, None] - position[None, :]
    return (distance >= 0) & (distance < window)


class SelfAttention(nn.Module):
    """Multi-head causal self-attention, optionally limited to a sliding window of tokens."""

    def __init__(self, config: GPTConfig, window: int | None) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.window = window
        self.scale = config.attention_scale
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = (
            proj(x).view(batch, time, self.n_head, width // self.n_head).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        if self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            mask = sliding_window_mask(time, self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.out_proj(y.transpose(1, 2).reshape(batch, time, width))


class MLP(nn.Module):
    """Position-wise feed-forward layer with GPT-2's tanh-approximated GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig, window: int | None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config, window)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only language model: ``forward(input_ids [B, T]) -> logits [B, T, vocab_size]``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.max_positions = config.max_positions
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.max_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config, config.window(layer)) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(init_weights)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids(input_ids, self.max_positions)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases (LayerNorm keeps ones and zeros)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
