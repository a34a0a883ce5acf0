"""What :func:`lowcomm.data.load_data` hands the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from lowcomm.data.batches import Batches
from lowcomm.data.tokenizer import TextTokenizer


@dataclass
class DataBundle:
    """One worker's data: its training stream, the held-out batches (the same on every worker),
    and the vocabulary size and tokenizer (language modelling) or number of classes (images)."""

    task: Literal["lm", "image"]
    train: Batches
    eval_batches: list[tuple[Tensor, Tensor]]
    vocab_size: int | None = None
    num_classes: int | None = None
    tokenizer: TextTokenizer | None = None
