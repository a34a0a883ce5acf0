"""``lowcomm export RUN_DIR --to DIR``: a run's global model as a Hugging Face model directory.

The model is the newest complete checkpoint's ``model.safetensors`` (verified against its manifest,
see :mod:`lowcomm.checkpointing.checkpoint`), converted by :mod:`lowcomm.models.hf_export` (an ``hf:DIR``
run's model is a ``transformers`` model already: it keeps DIR's config, which must still be there,
with the run's end-of-text token as its BOS and EOS); the tokenizer
is the run's ``tokenizer.json`` as a ``PreTrainedTokenizerFast``. ``DIR`` then holds
``config.json``, ``model.safetensors`` and the tokenizer's files, and loads offline with
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``. Before
anything is written, the converted model must give lowcomm's logits on a probe sequence (to
:data:`LOGITS_TOLERANCE`).
``DIR`` is written beside itself under a temporary name and committed in place (:mod:`lowcomm.atomic`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lowcomm.atomic import commit, fsync_path
from lowcomm.checkpointing.checkpoint import GLOBAL_MODEL, first_line, newest_complete_checkpoint
from lowcomm.cli import usage_error
from lowcomm.data.tokenizer import TextTokenizer, tokenizer_file
from lowcomm.launching.rundir import CONFIG_FILE, read_run_config
from lowcomm.models import build_model, model_spec
from lowcomm.models.hf_export import to_hf_model
from lowcomm.reporting.outputs import TOKENIZER_FILE

PROBE_TOKENS = 64
LOGITS_TOLERANCE = 1e-4
"""Largest difference allowed between the converted model's logits and lowcomm's, relative to the
largest logit (or absolute, below 1)."""
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""Written into ``tokenizer_config.json``: the name every transformers version since 4 loads."""


@dataclass(frozen=True)
class ExportSource:
    """What an export reads from a run: its model's name and implementation, its checkpoint and tokenizer."""

    model: str
    implementation: str
    checkpoint: Path
    tokenizer: TextTokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a lowcomm train run with a checkpoint")
    parser.add_argument("--to", type=Path, required=True, metavar="DIR", help="new (or empty) directory to write")


def run(args: argparse.Namespace) -> int:
    try:
        source = export_source(args.run_dir)
        check_destination(args.to)
        import transformers  # noqa: F401  (only to fail early when it is missing)
        model, hf_model = convert(source)
    except ImportError:
        return usage_error("export", "needs transformers: pip install 'lowcomm[hf]'")
    except ValueError as error:
        return usage_error("export", str(error))
    difference, largest = logits_difference(model, hf_model)
    if difference > LOGITS_TOLERANCE * max(1.0, largest):
        print(f"lowcomm export: error: the converted model's logits differ from lowcomm's by {difference:.3g} "
              f"(largest logit {largest:.3g}); nothing written", file=sys.stderr)
        return 1
    write_directory(args.to, hf_model, source.tokenizer, model.max_positions)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"lowcomm export: {source.checkpoint.name} of {args.run_dir} -> {args.to} "
          f"({type(hf_model).__name__}, {parameters:,} parameters, logits within {difference:.2g} of lowcomm's)\n"
          f"load it with AutoModelForCausalLM.from_pretrained({str(args.to)!r}) "
          f"and AutoTokenizer.from_pretrained({str(args.to)!r})")
    return 0


def export_source(run_dir: Path) -> ExportSource:
    """The model, newest complete checkpoint and tokenizer of the run in ``run_dir``; a one-line
    ValueError if there is no such run, it trained no language model, or it has no checkpoint."""
    config = read_run_config(run_dir)
    model = config.get("model")
    try:
        task = model_spec(model).task
    except ValueError as error:
        raise ValueError(f"RUN_DIR: {run_dir / CONFIG_FILE} names no model lowcomm can build ({error})") from None
    if task != "lm":
        raise ValueError(f"RUN_DIR: {run_dir} trained {model}, not a language model; only language models export")
    checkpoint, skipped = newest_complete_checkpoint(run_dir / "checkpoints")
    problems = "; ".join(f"{directory.name}: {problem}" for directory, problem in skipped)
    if checkpoint is None:
        raise ValueError(f"RUN_DIR: {run_dir} has no complete checkpoint in checkpoints/"
                         + (f" ({problems})" if problems else ""))
    if problems:
        print(f"lowcomm export: warning: skipping newer incomplete checkpoints ({problems})", file=sys.stderr)
    if not (run_dir / TOKENIZER_FILE).is_file():
        raise ValueError(f"RUN_DIR: {run_dir} has no {TOKENIZER_FILE}; lowcomm train --resume --out {run_dir} "
                         "writes it")
    return ExportSource(model, config.get("model_impl", "lowcomm"), checkpoint, tokenizer_file(run_dir / TOKENIZER_FILE))


def check_destination(to: Path) -> None:
    if to.exists() and not (to.is_dir() and not any(to.iterdir())):
        raise ValueError(f"--to: {to} already exists and is not an empty directory")
    if not to.parent.is_dir():
        raise ValueError(f"--to: {to.parent} is not a directory")


def convert(source: ExportSource) -> tuple[torch.nn.Module, Any]:
    """lowcomm's model with the checkpoint's global weights, and its HF twin; a one-line ValueError
    if the weights file is not safetensors or holds other tensors than the model's."""
    path = source.checkpoint / GLOBAL_MODEL
    model = build_model(source.model, vocab_size=source.tokenizer.vocab_size, implementation=source.implementation)
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"RUN_DIR: {path} is not a safetensors file ({first_line(error)})") from None
    problem = weights_problem(state, model.state_dict())
    if problem is not None:
        raise ValueError(f"RUN_DIR: {path} does not hold {source.model}'s weights: {problem}")
    model.load_state_dict(state)
    model.eval()
    return model, to_hf_model(source.model, model, source.tokenizer.end_of_text_id)


def weights_problem(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """The first way ``state`` differs from the model's ``expected`` tensors by name or shape; None if it does not."""
    for name, tensor in expected.items():
        if name not in state:
            return f"{name} is missing"
        if state[name].shape != tensor.shape:
            return f"{name} has shape {list(state[name].shape)}, the model's is {list(tensor.shape)}"
    extra = sorted(set(state) - set(expected))
    return f"{extra[0]} is not one of the model's tensors" if extra else None


@torch.no_grad()
def logits_difference(model: torch.nn.Module, hf_model: Any) -> tuple[float, float]:
    """The largest absolute difference between the two models' logits on a fixed probe sequence,
    and the largest absolute logit of lowcomm's model there."""
    vocab_size = hf_model.config.vocab_size
    probe = (torch.arange(min(PROBE_TOKENS, model.max_positions)) * 7919 % vocab_size)[None]
    expected = model(probe)
    return (expected - hf_model(input_ids=probe).logits).abs().max().item(), expected.abs().max().item()


def write_directory(to: Path, hf_model: Any, tokenizer: TextTokenizer, max_positions: int) -> None:
    """Save the model and tokenizer into a staging directory beside ``to``, then commit it as ``to``."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()
    end_of_text = tokenizer.backend.id_to_token(tokenizer.end_of_text_id)
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, bos_token=end_of_text,
                                           eos_token=end_of_text, model_max_length=max_positions)
    staging = to.parent / f".{to.name}.export-{os.getpid()}"
    try:
        hf_model.save_pretrained(staging)
        hf_tokenizer.save_pretrained(staging)
        tokenizer_config = staging / "tokenizer_config.json"
        settings = json.loads(tokenizer_config.read_text())
        settings["tokenizer_class"] = TOKENIZER_CLASS
        tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n")
        for path in staging.iterdir():
            fsync_path(path)
        commit(staging, to)  # replaces an empty directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)
