"""Data for ``lowcomm train``: synthetic stories, local text files, HF datasets, synthetic images
and image folders, each as one worker's resumable training stream plus fixed held-out batches."""

from __future__ import annotations

from pathlib import Path

from lowcomm.data.batches import Batches
from lowcomm.data.bundle import DataBundle
from lowcomm.data.corpus import read_documents
from lowcomm.data.images import folder_images, image_data
from lowcomm.data.language import language_data
from lowcomm.data.shapes import NUM_CLASSES, synthetic_images
from lowcomm.data.spec import parse_data_spec, validate_data_spec

__all__ = ["Batches", "DataBundle", "load_data", "validate_data_spec"]


def load_data(
    data: str,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seq_len: int,
    seed: int,
    tokenizer: str | None = None,
    vocab_size: int = 2048,
    cache_dir: str | Path,
    eval_batches: int = 8,
) -> DataBundle:
    """Load the dataset ``data`` names (see :func:`validate_data_spec`) for worker ``rank`` of
    ``world_size``. Text becomes next-token windows of ``seq_len`` tokens (BPE trained and cached in
    ``cache_dir`` unless ``tokenizer`` is given); images become normalised 32x32 batches."""
    positive = {"world_size": world_size, "batch_size": batch_size, "seq_len": seq_len, "eval_batches": eval_batches}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: must be in [0, world_size={world_size}), got {rank}")
    source = parse_data_spec(data)
    common = dict(rank=rank, world_size=world_size, batch_size=batch_size, seed=seed, eval_batches=eval_batches)
    if source.kind == "synthetic-images":
        return image_data(*synthetic_images(), NUM_CLASSES, **common)
    if source.kind == "image-folder":
        return image_data(*folder_images(source.paths[0]), **common)
    return language_data(
        read_documents(source),
        **common,
        seq_len=seq_len,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        cache_dir=cache_dir,
    )
