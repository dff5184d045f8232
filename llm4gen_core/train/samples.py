"""What the data layer hands the training loop (good samples, batches, bad samples) and the seeds
that make every sample's pixels a function of (seed, epoch, key) alone."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass
class Example:
    """One good sample."""

    pixel_values: torch.Tensor        # [3, R, R] float32 in [-1, 1]
    text: str
    pairs: list[tuple[str, str]]      # entity-attribute pairs; [] when the sample has none
    key: str                          # stable id: the file_name, or "shard:key"
    original_size: tuple[int, int] = (0, 0)    # (height, width) as stored, for SDXL's size conditioning
    crop_top_left: tuple[int, int] = (0, 0)    # where the crop starts in the resized image


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be used: its key, the reason (a short category) and details."""

    key: str
    reason: str
    detail: str = ""


@dataclass
class Batch:
    """``batch_size`` good samples; ``skipped`` lists the bad ones met while filling it."""

    pixel_values: torch.Tensor        # [b, 3, R, R]
    texts: list[str]
    pairs: list[list[tuple[str, str]]]
    keys: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (key, reason)
    epoch: int = 0
    original_sizes: list[tuple[int, int]] = field(default_factory=list)   # per sample, see Example
    crop_top_lefts: list[tuple[int, int]] = field(default_factory=list)


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """A sample's own generator for crop and flip: never global state, so that a run, its
    resumption and its data-loader workers produce the same pixels."""
    return random.Random(f"{seed}/{epoch}/{key}")


def mixed_seed(*parts) -> int:
    """A 63-bit seed from several values, the same in every run (str seeds are hashed by SHA-512)."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)
