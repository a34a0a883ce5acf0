"""lowcomm's language models as Hugging Face ``transformers`` models that compute the same logits.

- ``gpt-neo-*`` become ``GPTNeoForCausalLM`` of the same shape: lowcomm's parameter names are
  HF's (:func:`~lowcomm.models.gpt_neo.hf_to_lowcomm_name` maps them), and a ``--model-impl hf``
  model is one already, as is an ``hf:DIR`` model (:mod:`lowcomm.models.hf_local`).
- ``gpt-tiny`` is GPT-2 exactly, so it becomes ``GPT2LMHeadModel``: pre-LayerNorm blocks (eps
  1e-5), learned positions, a tanh-GELU (``gelu_new``) MLP, biases on every projection but the
  output one, attention over all earlier tokens scaled by 1/sqrt(head_dim), and the output layer
  tied to the token embedding. GPT-2 keeps its linear layers as ``Conv1D`` (weights transposed)
  and q, k and v as one ``c_attn``. (GPT-Neo differs: unscaled attention, no q/k/v bias.)

Any other GPT configuration matches no HF architecture exactly and is refused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lowcomm.models.gpt import GPTConfig
from lowcomm.models.gpt_neo import GPT_NEO_SHAPES, HF_MASK_BUFFERS, hf_to_lowcomm_name
from lowcomm.models.hf_gpt_neo import hf_gpt_neo_config
from lowcomm.models.hf_local import HFCausalLM
from lowcomm.models.registry import model_spec

GPT2_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")


def gpt2_config(config: GPTConfig, end_of_text_id: int | None) -> Any:
    """The ``transformers.GPT2Config`` that computes what ``config`` does; ValueError if none does."""
    from transformers import GPT2Config

    if config.local_layers or config.attention_scale is not None or not config.qkv_bias:
        raise ValueError("model: no Hugging Face architecture matches this GPT exactly (local layers, "
                         "unscaled attention or bias-free q/k/v)")
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.mlp_width,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        scale_attn_weights=True,
        tie_word_embeddings=True,
        bos_token_id=end_of_text_id,
        eos_token_id=end_of_text_id,
    )


def gpt2_state_dict(state: Mapping[str, Tensor], n_layer: int) -> dict[str, Tensor]:
    """lowcomm GPT weights under GPT-2's names and layouts."""
    hf = {f"transformer.{name}": state[name] for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    hf["lm_head.weight"] = state["lm_head.weight"]
    for layer in range(n_layer):
        ours, theirs = f"h.{layer}.", f"transformer.h.{layer}."
        for norm in ("ln_1", "ln_2"):
            for kind in ("weight", "bias"):
                hf[f"{theirs}{norm}.{kind}"] = state[f"{ours}{norm}.{kind}"]
        for kind in ("weight", "bias"):
            qkv = torch.cat([state[f"{ours}attn.{x}_proj.{kind}"] for x in "qkv"])
            hf[f"{theirs}attn.c_attn.{kind}"] = qkv.T if kind == "weight" else qkv
        pairs = (("attn.out_proj", "attn.c_proj"), ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj"))
        for mine, hf_name in pairs:
            hf[f"{theirs}{hf_name}.weight"] = state[f"{ours}{mine}.weight"].T
            hf[f"{theirs}{hf_name}.bias"] = state[f"{ours}{mine}.bias"]
    return {name: tensor.contiguous() for name, tensor in hf.items()}


def load_exactly(model: nn.Module, state: Mapping[str, Tensor], mask_buffers: tuple[str, ...]) -> None:
    """Load ``state`` into ``model``; every weight must be given (mask buffers excepted), nothing more."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith(mask_buffers)]
    if missing or unexpected:
        raise RuntimeError(f"export: weights missing {missing[:3]} or unexpected {unexpected[:3]}")


def to_hf_model(model_name: str, model: nn.Module, end_of_text_id: int | None = None) -> Any:
    """The ``transformers`` causal LM with ``model``'s weights, a lowcomm ``model_name`` built by
    :func:`~lowcomm.models.build_model` (either implementation, or an ``hf:`` model); ``end_of_text_id``
    becomes its BOS and EOS token. ValueError if no HF architecture matches."""
    if model_spec(model_name).task != "lm":
        raise ValueError(f"model: {model_name} is not a language model; only language models export")
    if isinstance(model, HFCausalLM):
        hf_model = copy.deepcopy(model.model)
        hf_model.config.bos_token_id = hf_model.config.eos_token_id = end_of_text_id
    elif model_name in GPT_NEO_SHAPES:
        from transformers import GPTNeoForCausalLM

        shape = GPT_NEO_SHAPES[model_name]
        hf_model = GPTNeoForCausalLM(hf_gpt_neo_config(shape, model.config.vocab_size, end_of_text_id))
        ours = model.state_dict()
        load_exactly(hf_model, {name: ours[hf_to_lowcomm_name(name)] for name in hf_model.state_dict()
                                if not name.endswith(HF_MASK_BUFFERS)}, HF_MASK_BUFFERS)
    else:
        from transformers import GPT2LMHeadModel

        hf_model = GPT2LMHeadModel(gpt2_config(model.config, end_of_text_id))
        load_exactly(hf_model, gpt2_state_dict(model.state_dict(), model.config.n_layer), GPT2_MASK_BUFFERS)
    return hf_model.eval()
