"""GPT-Neo from Hugging Face ``transformers``, randomly initialised, behind lowcomm's LM interface."""

from __future__ import annotations

from typing import Any

from lowcomm.models.gpt_neo import GPTNeoShape
from lowcomm.models.hf_local import HFCausalLM


def hf_gpt_neo_config(shape: GPTNeoShape, vocab_size: int, end_of_text_id: int | None = None) -> Any:
    """The ``transformers.GPTNeoConfig`` of this shape: tied embeddings, gelu_new, no dropout.

    ``end_of_text_id`` becomes the BOS and EOS token for generation; logits do not depend on it.
    """
    try:
        from transformers import GPTNeoConfig
    except ImportError as error:
        raise ImportError(
            "gpt-neo models with implementation='hf' need transformers: pip install 'lowcomm[hf]'"
        ) from error
    return GPTNeoConfig(
        vocab_size=vocab_size,
        max_position_embeddings=shape.max_positions,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        attention_types=[[["global", "local"], shape.num_layers // 2]],
        window_size=shape.window_size,
        activation_function="gelu_new",
        resid_dropout=0.0,
        embed_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=end_of_text_id,
        eos_token_id=end_of_text_id,
    )


def build_hf_gpt_neo(shape: GPTNeoShape, vocab_size: int) -> HFCausalLM:
    """A fresh GPTNeoForCausalLM of this shape (see :func:`hf_gpt_neo_config`)."""
    config = hf_gpt_neo_config(shape, vocab_size)  # says what to install when transformers is missing
    from transformers import GPTNeoForCausalLM

    return HFCausalLM(GPTNeoForCausalLM(config), max_positions=shape.max_positions)
