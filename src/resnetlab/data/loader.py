"""Batches for training and evaluation, reproducible and resumable mid-epoch.

Every random choice is a function of (seed, epoch, position): the order of samples, the
per-sample augmentation of files (whatever worker decodes them), the per-batch augmentation.
So a run resumed at batch k of epoch e sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.errors import ConfigError
from .images import open_image
from .sources import Split
from .transforms import auto_augment_batch, eval_resize_size, file_transform

# Data sets decoded into memory when their uint8 cache stays below this size.
MEMORY_CACHE_BYTES = 2 * 2**30


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), stable across processes."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class EpochSampler:
    """Batches of indices for one epoch; seeded by (seed, epoch); sharded for DDP."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> torch.Tensor:
        """This epoch's order of all ``n`` indices, before sharding."""
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            return torch.randperm(self.n, generator=g)
        return torch.arange(self.n)

    def _indices(self) -> torch.Tensor:
        idx = self._order()
        if self.world_size > 1:
            if self.shuffle:
                # Training: every rank gets the same number of samples, so every rank takes
                # the same number of steps (DDP all-reduces each one).
                per_rank = math.ceil(len(idx) / self.world_size)
                idx = torch.cat([idx, idx[: per_rank * self.world_size - len(idx)]])
            # Evaluation: no padding, so every sample is scored exactly once across ranks.
            idx = idx[self.rank :: self.world_size]
        return idx

    def __len__(self) -> int:
        n = self.n
        if self.world_size > 1:
            if self.shuffle:
                n = math.ceil(n / self.world_size)
            else:
                n = len(range(self.rank, n, self.world_size))
        # drop_last: a last batch of 1 would crash BatchNorm in training; evaluation never drops.
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self._indices().tolist()
        for b in range(self.start_batch, len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


class TensorLoader:
    """Batches straight from a uint8 tensor in memory: no workers, no per-image Python."""

    def __init__(self, split: Split, sampler: EpochSampler, auto_augment: str | None = None):
        assert split.images is not None
        self.images, self.labels, self.sampler = split.images, split.labels, sampler
        self.auto_augment = auto_augment
        self.geometric = True

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b, idx in enumerate(self.sampler, start=self.sampler.start_batch):
            index = torch.tensor(idx)
            x = self.images[index]
            if self.auto_augment not in (None, "none"):
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(
                        mix_seed(self.sampler.seed, self.sampler.epoch, b, 1)
                    )
                    x = auto_augment_batch(x, self.auto_augment)
            yield x, self.labels[index]


class _FileDataset(Dataset):
    """Decodes one file; the sampler passes (index, seed) so augmentation is per-sample seeded."""

    def __init__(self, split: Split, transform, channels: int) -> None:
        self.paths, self.labels = split.paths, split.labels
        self.transform, self.channels = transform, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        img = open_image(self.paths[index], self.channels)
        # The CPU generator alone: torch.manual_seed also reseeds every accelerator backend and
        # costs ~0.7 ms, a third of the whole per-image budget.
        torch.default_generator.manual_seed(seed)
        return self.transform(img), self.labels[index]


class _SeededBatches:
    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        s = self.sampler
        for idx in s:
            yield [(i, mix_seed(s.seed, s.epoch, i, 2)) for i in idx]


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches every process of the terminal's group. The main process stops after its
    # current step and saves a checkpoint; a worker that died on the same signal would break
    # the batch it is fetching, so workers leave SIGINT to the main process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Distinct, reproducible numpy/python streams per worker (torch's own is already distinct).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def worker_loader(dataset, num_workers: int, pin_memory: bool, **kwargs) -> DataLoader:
    """A DataLoader with the worker settings every loader here uses: workers persist across
    epochs, leave Ctrl-C to the main process and seed numpy/random (``_worker_init``), and
    each keeps 4 batches in flight. ``kwargs``: how batches are formed."""
    workers = num_workers > 0
    return DataLoader(
        dataset,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        **kwargs,
    )


class FileLoader:
    """Decode-and-augment per sample in worker processes (data sets too big for memory)."""

    geometric = False

    def __init__(
        self,
        split: Split,
        sampler: EpochSampler,
        transform,
        channels: int,
        num_workers: int,
        pin_memory: bool = False,
    ) -> None:
        self.sampler = sampler
        self.loader = worker_loader(
            _FileDataset(split, transform, channels),
            num_workers,
            pin_memory,
            batch_sampler=_SeededBatches(sampler),
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.loader)


def cache_size(preset: str, input_size: int) -> int:
    """Side of the square stored in memory for a file: room for random crops around the input."""
    return eval_resize_size(input_size) if preset == "imagenet" else input_size


def cache_geometry(preset: str, input_size: int):
    """PIL image -> uint8 (C, side, side), ``side = cache_size(...)``: how a training image is
    kept in memory (ImageNet preset: the shorter side to ``side`` and the centre square;
    otherwise both sides to ``side``), and the resolution its statistics are taken at."""
    side = cache_size(preset, input_size)
    kind = "imagenet" if preset == "imagenet" else "small"
    return file_transform(kind, side, train=False, resize_size=side)


def decode_to_memory(
    split: Split, channels: int, side: int, geometry=None, workers: int | None = None
) -> Split:
    """Decode every file once to uint8 (N, C, side, side) through ``geometry`` (PIL image ->
    uint8 tensor); by default the shorter side to ``side`` and the center square."""
    resize = geometry or file_transform("imagenet", side, train=False, resize_size=side)

    def load(path):
        return resize(open_image(path, channels))

    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(load, split.paths))
    stacked = (
        torch.stack(images) if images else torch.empty(0, channels, side, side, dtype=torch.uint8)
    )
    return Split(labels=split.labels, images=stacked, paths=split.paths, sizes=split.sizes)


def fits_in_memory(split: Split, channels: int, side: int) -> bool:
    return len(split) * channels * side * side <= MEMORY_CACHE_BYTES
