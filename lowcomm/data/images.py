"""Image-classification data: uint8 images in memory, normalised per channel when batched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lowcomm.data.batches import Batches, held_out_batches
from lowcomm.data.bundle import DataBundle
from lowcomm.data.shapes import IMAGE_SIZE
from lowcomm.data.spec import class_folders, one_line
from lowcomm.data.split import held_out_mask


def channel_statistics(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of uint8 images ``[N, 3, H, W]`` on a 0-1 scale,
    from each channel's histogram (exact, and without a float copy of the images)."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256) for c in range(3)]).double()
    mean = (counts * levels).sum(1) / counts.sum(1)
    variance = (counts * (levels - mean[:, None]) ** 2).sum(1) / counts.sum(1)
    return mean.float().view(3, 1, 1), variance.sqrt().float().clamp_min(1e-6).view(3, 1, 1)


class ImageSet:
    """Images and labels; ``image_set[indices]`` gives normalised float images ``[B, 3, 32, 32]``
    and labels ``[B]``."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return (self.images[indices].float() / 255 - self.mean) / self.std, self.labels[indices]


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 ``[3, 32, 32]`` RGB (PIL, bilinear resize)."""
    try:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    except OSError as error:
        raise ValueError(f"data: cannot read image {path}: {one_line(error)}") from error
    return np.asarray(resized).transpose(2, 0, 1)


def folder_images(root: Path) -> tuple[Tensor, Tensor, int]:
    """The images of ``root/<class_name>/*.png|jpg``, their labels (class folders in name order)
    and the number of classes."""
    classes = class_folders(root)
    images = [read_image(path) for files in classes.values() for path in files]
    labels = [label for label, files in enumerate(classes.values()) for _ in files]
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), len(classes)


def image_data(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    eval_batches: int,
) -> DataBundle:
    """Hold out images, normalise both splits with the training images' channel statistics, and
    batch them."""
    held_out = torch.from_numpy(held_out_mask(len(labels)))
    train_images = images[~held_out]
    mean, std = channel_statistics(train_images)
    train = ImageSet(train_images, labels[~held_out], mean, std)
    evaluation = ImageSet(images[held_out], labels[held_out], mean, std)
    return DataBundle(
        task="image",
        train=Batches(train, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size),
        eval_batches=held_out_batches(evaluation, batch_size=batch_size, count=eval_batches),
        num_classes=num_classes,
    )
