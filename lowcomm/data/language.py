"""Language-modelling data: documents -> one token stream -> windows of ``seq_len + 1`` tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lowcomm.data.batches import Batches, held_out_batches
from lowcomm.data.bundle import DataBundle
from lowcomm.data.split import held_out_mask
from lowcomm.data.tokenizer import TextTokenizer, cached_byte_level_bpe, load_tokenizer

ENCODE_CHUNK = 4096


def token_stream(documents: list[str], tokenizer: TextTokenizer) -> Tensor:
    """All documents' tokens as one int32 stream, each document followed by end-of-text."""
    pieces = []
    for start in range(0, len(documents), ENCODE_CHUNK):
        for ids in tokenizer.encode(documents[start : start + ENCODE_CHUNK]):
            pieces.append(np.asarray(ids + [tokenizer.end_of_text_id], dtype=np.int32))
    return torch.from_numpy(np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32))


class TokenWindows:
    """Non-overlapping windows of a token stream: window ``i`` is tokens ``[i*seq_len, (i+1)*seq_len]``
    (inclusive), read as inputs ``[:-1]`` and next-token targets ``[1:]``."""

    def __init__(self, tokens: Tensor, seq_len: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.span = torch.arange(seq_len + 1)

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        rows = self.tokens[indices[:, None] * self.seq_len + self.span].long()
        return rows[:, :-1], rows[:, 1:]


def language_data(
    documents: list[str],
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seq_len: int,
    seed: int,
    tokenizer: str | None,
    vocab_size: int,
    cache_dir: str | Path,
    eval_batches: int,
) -> DataBundle:
    """Hold out documents, tokenize (with a BPE trained on the training documents unless a
    ``tokenizer`` is named) and batch both splits."""
    held_out = held_out_mask(len(documents))
    train_documents = [d for d, is_held_out in zip(documents, held_out) if not is_held_out]
    eval_documents = [d for d, is_held_out in zip(documents, held_out) if is_held_out]
    if tokenizer is None:
        text_tokenizer = cached_byte_level_bpe(train_documents, vocab_size, Path(cache_dir))
    else:
        text_tokenizer = load_tokenizer(tokenizer)
    train_windows = TokenWindows(token_stream(train_documents, text_tokenizer), seq_len)
    eval_windows = TokenWindows(token_stream(eval_documents, text_tokenizer), seq_len)
    return DataBundle(
        task="lm",
        train=Batches(train_windows, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size),
        eval_batches=held_out_batches(eval_windows, batch_size=batch_size, count=eval_batches),
        vocab_size=text_tokenizer.vocab_size,
        tokenizer=text_tokenizer,
    )
