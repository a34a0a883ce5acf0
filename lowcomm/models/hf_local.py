"""Any Hugging Face ``transformers`` causal LM from local files: ``--model hf:DIR``.

``DIR`` is a directory holding ``config.json`` (with weights, which are loaded, or without, when the
model is built from the config and initialised by the global generator: the run's seed) or the path
of a ``config.json`` itself. Everything is read with ``local_files_only``: no hub is ever asked.
The model keeps its own vocabulary; the data's tokenizer must fit in it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowcomm.models.gpt import check_input_ids

HF_PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""transformers' weight file names: a directory holding one of them has weights to load."""


class HFCausalLM(nn.Module):
    """Wrap a ``transformers`` causal LM so that ``forward(input_ids)`` returns plain logits."""

    def __init__(self, model: nn.Module, max_positions: int) -> None:
        super().__init__()
        self.model = model
        self.max_positions = max_positions

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids(input_ids, self.max_positions)
        return self.model(input_ids=input_ids, use_cache=False).logits


def is_hf_name(name: Any) -> bool:
    """Whether ``name`` is an ``hf:`` model."""
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def absolute_hf_name(name: str) -> str:
    """``hf:`` and the absolute path of ``name``'s files, so that a resumed run or an export finds them
    from anywhere."""
    return HF_PREFIX + os.path.abspath(Path(name.removeprefix(HF_PREFIX)).expanduser())


def local_config(name: str) -> Any:
    """The ``transformers`` config of the ``hf:`` model ``name``; a one-line ValueError if it is missing,
    unreadable or not a causal language model's."""
    path = Path(name.removeprefix(HF_PREFIX)).expanduser()
    if not path.exists():
        raise ValueError(f"{name}: no such directory or config file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"{name}: the directory holds no config.json")
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        raise ValueError(f"{name}: hf: models need transformers: pip install 'lowcomm[hf]'") from None
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        raise ValueError(f"{name}: cannot read its config ({message})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"{name}: a {config.model_type!r} config is not a causal language model's "
                         "(AutoModelForCausalLM has no class for it)")
    return config


def config_limits(name: str, config: Any) -> tuple[int, int]:
    """The longest token sequence and the vocabulary size of the model ``config`` describes."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config  # older transformers have none
    positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    if not isinstance(positions, int) or not isinstance(getattr(text, "vocab_size", None), int):
        raise ValueError(f"{name}: its config gives no max_position_embeddings (or n_positions) and vocab_size")
    return positions, text.vocab_size


def build_hf_causal_lm(name: str, vocab_size: int) -> HFCausalLM:
    """The ``hf:`` model ``name`` in training mode and float32 (as lowcomm's own: ``--precision bf16``
    autocasts), with its directory's weights if it holds any (but on the meta device, which holds
    none); ``vocab_size`` (the data's) must not exceed the model's."""
    config = local_config(name)
    max_positions, model_vocab = config_limits(name, config)
    if vocab_size > model_vocab:
        raise ValueError(f"vocab_size: the data's {vocab_size} tokens exceed {name}'s vocab_size {model_vocab}")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = Path(name.removeprefix(HF_PREFIX)).expanduser()
    weights = path.is_dir() and any((path / file).is_file() for file in WEIGHT_FILES)
    if weights and torch.get_default_device().type != "meta":
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_config(config)
    return HFCausalLM(model.float().train(), max_positions)
