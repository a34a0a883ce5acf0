"""Synthetic 32x32 RGB images: ten classes of shapes and patterns, seeded and learnable.

Each image draws its class's pattern at a random position and scale, in a random foreground
colour on a contrasting random background, plus Gaussian brightness noise per pixel; colour says
nothing about the class, so a classifier must learn shape.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

IMAGE_SIZE = 32
SHAPES_SEED = 0
DEFAULT_NUM_IMAGES = 10_000
NOISE_STD = 0.08

Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]
TAU = 2 * np.pi

# Each pattern maps pattern coordinates (u, v), centred on the image's shape and in units of its
# scale, to a foreground mask.
PATTERNS: tuple[Pattern, ...] = (
    lambda u, v: u**2 + v**2 < 1,  # disc
    lambda u, v: np.maximum(abs(u), abs(v)) < 0.8,  # square
    lambda u, v: (abs(v) < 0.8) & (abs(u) < 0.5 * (v + 0.8)),  # triangle
    lambda u, v: (u**2 + v**2 > 0.35) & (u**2 + v**2 < 1),  # ring
    lambda u, v: (np.minimum(abs(u), abs(v)) < 0.25) & (np.maximum(abs(u), abs(v)) < 1),  # plus
    lambda u, v: np.sin(TAU * v) > 0,  # horizontal stripes
    lambda u, v: np.sin(TAU * u) > 0,  # vertical stripes
    lambda u, v: np.sin(TAU * (u + v) / 1.4) > 0,  # diagonal stripes
    lambda u, v: np.sin(TAU * u / 1.4) * np.sin(TAU * v / 1.4) > 0,  # checkerboard
    lambda u, v: np.cos(TAU * u) + np.cos(TAU * v) > 1.2,  # grid of dots
)
NUM_CLASSES = len(PATTERNS)


def synthetic_images(count: int = DEFAULT_NUM_IMAGES, seed: int = SHAPES_SEED) -> tuple[Tensor, Tensor]:
    """``count`` uint8 images ``[count, 3, 32, 32]`` and their labels in ``[0, NUM_CLASSES)``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count)
    centre = rng.uniform(-0.3, 0.3, (count, 2, 1, 1)).astype(np.float32)
    scale = rng.uniform(0.35, 0.7, (count, 1, 1)).astype(np.float32)
    foreground = rng.uniform(0, 1, (count, 3, 1, 1)).astype(np.float32)
    background = (foreground + rng.uniform(0.3, 0.7, (count, 3, 1, 1)).astype(np.float32)) % 1
    grid = np.linspace(-1, 1, IMAGE_SIZE, dtype=np.float32)
    u = (grid[None, None, :] - centre[:, 0]) / scale
    v = (grid[None, :, None] - centre[:, 1]) / scale
    mask = np.zeros((count, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for label, pattern in enumerate(PATTERNS):
        chosen = labels == label
        mask[chosen] = pattern(u[chosen], v[chosen])
    pixels = mask[:, None] * (foreground - background)
    pixels += background
    pixels += NOISE_STD * rng.standard_normal((count, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    images = np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(labels)
