"""Batches drawn from a set of examples: this worker's endless training stream, and the fixed
held-out batches."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor


class Examples(Protocol):
    """Indexable examples: ``examples[indices]`` is the batch ``(inputs, targets)`` at those indices."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: Tensor) -> tuple[Tensor, Tensor]: ...


class Batches:
    """This worker's infinite, resumable stream of training batches.

    Worker ``rank`` owns examples ``rank, rank + world_size, ...``, so workers never share one.
    Epoch ``e`` visits the owned examples in a permutation seeded by ``(seed, e)``; a batch may
    run on into the next epoch. The stream is a function of (seed, rank, position), and the
    position (epoch, offset) is all :meth:`state_dict` needs.
    """

    def __init__(self, examples: Examples, *, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        if seed < 0:
            raise ValueError(f"seed: must be >= 0, got {seed}")
        self.examples = examples
        self.shard = torch.arange(rank, len(examples), world_size)
        if len(self.shard) == 0:
            raise ValueError(f"data: {len(examples)} training examples cannot feed {world_size} workers; use more data")
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self.order = self.epoch_order(0)

    def epoch_order(self, epoch: int) -> Tensor:
        permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.shard))
        return self.shard[torch.from_numpy(permutation)]

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        picked = []
        missing = self.batch_size
        while missing:
            taken = self.order[self.offset : self.offset + missing]
            picked.append(taken)
            missing -= len(taken)
            self.offset += len(taken)
            if self.offset == len(self.order):
                self.epoch, self.offset = self.epoch + 1, 0
                self.order = self.epoch_order(self.epoch)
        return self.examples[torch.cat(picked)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "shard_size": len(self.shard)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["shard_size"]) != len(self.shard):
            raise ValueError(
                f"state: saved for a shard of {int(state['shard_size'])} examples, this one has {len(self.shard)}"
                " (different data, seq_len or world_size?)"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self.order = self.epoch_order(self.epoch)

    def continue_from(self, state: dict[str, int]) -> None:
        """Continue at the share of its epoch that ``state`` had reached, in this shard: another number
        of workers (or of live groups) cuts the data into shards of another size."""
        size = len(self.shard)
        offset = int(state["offset"]) * size // int(state["shard_size"])
        self.load_state_dict({"epoch": int(state["epoch"]), "offset": offset, "shard_size": size})


def held_out_batches(examples: Examples, *, batch_size: int, count: int) -> list[tuple[Tensor, Tensor]]:
    """The first ``count`` batches of held-out examples, in order (the last may be short)."""
    total = min(len(examples), batch_size * count)
    if total == 0:
        raise ValueError("data: the held-out split is too small for one example; use more data or a smaller seq_len")
    return [examples[torch.arange(start, min(start + batch_size, total))] for start in range(0, total, batch_size)]
