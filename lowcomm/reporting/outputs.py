"""What a run leaves for people besides its records, all written atomically by rank 0:

- ``loss.png``: training and eval loss against step and wall-clock, synchronisations marked
  (rewritten at every checkpoint and at the end);
- ``tokenizer.json``: a language model's tokenizer, so the run can be read and exported on its own;
- ``samples.txt``: a language model's greedy and sampled continuations of a fixed prompt, the start
  of the first held-out document, at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lowcomm.atomic import write_atomically
from lowcomm.data.tokenizer import TextTokenizer
from lowcomm.models.generate import continue_tokens
from lowcomm.reporting.records import read_records

LOSS_PLOT = "loss.png"
TOKENIZER_FILE = "tokenizer.json"
SAMPLES_FILE = "samples.txt"
PROMPT_TOKENS = 12
MAX_NEW_TOKENS = 64
SAMPLING_TEMPERATURE = 0.8


def write_loss_plot(out: Path, title: str) -> None:
    """``out/loss.png`` from ``out/metrics.jsonl`` as it stands."""
    from lowcomm.reporting.plotting import loss_figure, save_figure  # matplotlib: on rank 0, at its first checkpoint

    save_figure(loss_figure(read_records(out / "metrics.jsonl"), title), out / LOSS_PLOT)


def write_tokenizer(out: Path, tokenizer: TextTokenizer) -> None:
    write_atomically(out / TOKENIZER_FILE, lambda temporary: tokenizer.backend.save(str(temporary)))


def held_out_prompt(eval_batches: list[tuple[Tensor, Tensor]], seq_len: int) -> list[int]:
    """The first tokens of the first held-out window (the start of the first held-out document):
    ``PROMPT_TOKENS`` of them, or half a sequence if that is shorter."""
    first_window = eval_batches[0][0][0]
    return first_window[: max(1, min(PROMPT_TOKENS, seq_len // 2))].tolist()


def samples_text(model: nn.Module, tokenizer: TextTokenizer, prompt: list[int], seq_len: int, seed: int) -> str:
    """The prompt, its greedy continuation and one sampled with a generator seeded by ``seed``;
    prompt and continuation together stay within the training sequence length."""
    new_tokens = max(1, min(MAX_NEW_TOKENS, seq_len - len(prompt)))
    stop = tokenizer.end_of_text_id
    greedy = continue_tokens(model, prompt, new_tokens, stop_id=stop)
    sampled = continue_tokens(model, prompt, new_tokens, stop_id=stop, temperature=SAMPLING_TEMPERATURE,
                              generator=torch.Generator().manual_seed(seed))
    decode = tokenizer.backend.decode
    return (
        f"Prompt (the start of the first held-out document):\n{decode(prompt)}\n\n"
        f"Greedy continuation:\n{decode(prompt + greedy)}\n\n"
        f"Sampled continuation (temperature {SAMPLING_TEMPERATURE}, seed {seed}):\n{decode(prompt + sampled)}\n"
    )


def write_samples(out: Path, model: nn.Module, tokenizer: TextTokenizer, prompt: list[int], seq_len: int,
                  seed: int) -> str:
    """Write ``out/samples.txt`` (see :func:`samples_text`) and return its text."""
    text = samples_text(model, tokenizer, prompt, seq_len, seed)
    write_atomically(out / SAMPLES_FILE, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return text
