"""Resumable infinite sampling for the training loop.

The reference draws one DistributedSampler permutation and re-uses it every epoch (quirk 17); augmentation then
uses the global python/numpy RNGs inside the workers. Here the stream of (index, seed) pairs is a pure function of
(seed, rank, world size, position), and each item seeds python ``random`` and ``numpy.random`` from its pair before
the dataset's augmentation runs. So iteration n always sees the same crops, and a resumed run continues the exact
sequence of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def _item_seed(seed: int, position: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class InfiniteSampler(Sampler):
    """Endless ``(index, item_seed)`` stream for one rank, starting at ``start`` samples into that rank's stream.

    The permutation is drawn once from ``seed`` (same for every pass, quirk 17) and sharded like DistributedSampler
    (padded to a multiple of ``world_size`` by repeating the head, then ``rank::world_size``).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start: int = 0,
                 shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.rank, self.world_size, self.seed, self.start = rank, world_size, seed, start
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(size, generator=gen).tolist() if shuffle else list(range(size))
        padded = order + order[: (-size) % world_size]
        self.indices = padded[rank::world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        n = len(self.indices)
        while True:
            yield self.indices[position % n], _item_seed(self.seed * 1000 + self.rank, position)
            position += 1

    def __len__(self) -> int:  # only used for progress display; the stream is endless
        return len(self.indices)


class SeededItems(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` seeds python/numpy RNGs, then returns ``dataset[index]``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            random.seed(seed)
            np.random.seed(seed)
            return self.dataset[index]
        return self.dataset[key]
