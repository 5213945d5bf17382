"""Batches streamed from WebDataset shards (``wds``), with the interface of the other loaders.

Each loader worker reads one lane of ``wds.epoch_plan``: its shard segments in order, through
a shuffle buffer seeded by (seed, epoch, rank, lane), cut into the lane's batches; the
DataLoader takes one batch from each worker in turn, so batch ``j`` comes from lane
``j % lanes`` and the order of batches is fixed by (seed, epoch, world size, --num-workers).
The shuffle buffer holds encoded bytes: images are decoded (and augmented, seeded per sample
by its batch and place in it) only once a batch is formed, in the worker.

Mid-epoch resume (``sampler.set_epoch(epoch, start_batch)``): each lane reads and shuffles
its samples exactly as from the start of the epoch, and skips, without decoding them, the
batches numbered below ``start_batch``; worker ``w`` takes lane ``(w + start_batch) % lanes``,
so the first batch out is batch ``start_batch``, then the next ones in order, as in an
uninterrupted epoch. Resume with the same world size and --num-workers to see the same batches.

A member that cannot be decoded (corrupt, empty, no class, a shard that breaks off) is left
out of its batch, logged once, and added to ``bad_files``; more than ``max_bad_fraction`` of
an epoch's samples unreadable stops the run with the list, as for files in a folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..core.errors import ConfigError, DataError, ImageDecodeError
from .images import image_to_uint8
from .loader import mix_seed, worker_loader
from .moments import image_moments, stats_from_moments
from .sources import BadFile, Shards
from .wds import (
    IMAGE_KEYS,
    decode_image,
    decode_sample,
    epoch_plan,
    rank_samples,
    read_segment,
    require_webdataset,
)

log = logging.getLogger(__name__)

# Samples (encoded bytes) each worker holds to shuffle: about 110 MB per worker for ImageNet
# JPEGs (110 kB on average), and a window of 1000 samples from 1 to 3 shards. The writer
# shuffles samples across shards, so the buffer only has to break up what remains local.
SHUFFLE_BUFFER = 1000


class ShardSampler:
    """The epoch and first batch the workers start from; in shared memory, so persistent
    workers see what ``set_epoch`` (called by the engine before each epoch) sets."""

    def __init__(self, steps: int, seed: int, rank: int, world_size: int) -> None:
        self.steps, self.seed, self.rank, self.world_size = steps, seed, rank, world_size
        self._state = torch.zeros(2, dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    @property
    def start_batch(self) -> int:
        return int(self._state[1])

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self._state[0], self._state[1] = epoch, start_batch

    def __len__(self) -> int:
        return self.steps


class _ShardStream(IterableDataset):
    """One worker's batches: (uint8 images, labels, sample names, [(name, reason)] unreadable)."""

    def __init__(
        self,
        shards: Shards,
        sampler: ShardSampler,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        transform,
        channels: int,
        num_classes: int,
        lanes: int,
    ) -> None:
        self.files, self.counts = list(shards.files), list(shards.counts)
        self.sampler, self.batch_size = sampler, batch_size
        self.shuffle, self.drop_last, self.lanes = shuffle, drop_last, lanes
        self.transform, self.channels, self.num_classes = transform, channels, num_classes
        self.overrides = dict(shards.overrides)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        s = self.sampler
        epoch, start = s.epoch, s.start_batch
        plan = epoch_plan(
            self.counts,
            self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            seed=s.seed,
            epoch=epoch,
            rank=s.rank,
            world_size=s.world_size,
            lanes=self.lanes,
        )
        lane = plan[(worker + start) % self.lanes]
        stream: Iterator = (
            x for shard, a, b in lane.segments for x in read_segment(self.files[shard], a, b)
        )
        if self.shuffle:
            shuffle = require_webdataset().shuffle(SHUFFLE_BUFFER, SHUFFLE_BUFFER, seed=lane.seed)
            stream = shuffle(stream)
        for j, size in zip(lane.batches, lane.sizes):
            chunk = list(islice(stream, size))
            if j >= start:  # batches before a resume point are read, never decoded
                yield self._batch(chunk, epoch, j)

    def _batch(self, chunk: list, epoch: int, j: int):
        xs, ys, names, bad = [], [], [], []
        s = self.sampler
        for i, (name, sample) in enumerate(chunk):
            if "__missing__" in sample:
                bad.append((name, sample["__missing__"]))
                continue
            given = self.overrides.get(name, -1)
            if given is None:  # --exclude: left out, not counted as unreadable
                continue
            try:
                img, label = decode_sample(sample, self.channels, self.num_classes, name)
            except ImageDecodeError as exc:
                bad.append((exc.path, exc.reason))
                continue
            if given >= 0:  # --relabel
                label = given
            # The CPU generator alone, as the file loader does (per sample, whatever worker).
            torch.default_generator.manual_seed(mix_seed(s.seed, epoch, s.rank, j, i, 2))
            xs.append(self.transform(img))
            ys.append(label)
            names.append(name)
        if self.shuffle and len(xs) == 1:
            # A training batch of one crashes BatchNorm; it only happens when all the rest of
            # the batch was unreadable, and seeing that one image twice is harmless.
            xs, ys, names = xs * 2, ys * 2, names * 2
        x = torch.stack(xs) if xs else torch.empty(0, dtype=torch.uint8)
        return x, torch.tensor(ys, dtype=torch.long), names, bad


class ShardLoader:
    """Batches of (uint8 images, labels) streamed from shards; what FileLoader is for files:
    ``len()``, ``sampler.set_epoch(epoch, start_batch)``, per-sample transform in workers."""

    geometric = False  # the per-sample transform crops and resizes

    def __init__(
        self,
        shards: Shards,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        transform,
        channels: int,
        num_classes: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        max_bad_fraction: float = 0.01,
        bad_files: list[BadFile] | None = None,
        return_keys: bool = False,
    ) -> None:
        """``bad_files``: the list unreadable members are added to (the Source's);
        ``return_keys``: yield (images, labels, sample names), for checks."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        _, self.samples = rank_samples(shards.count, shuffle, rank, world_size)
        steps = self.samples // batch_size if drop_last else -(-self.samples // batch_size)
        self.sampler = ShardSampler(steps, seed, rank, world_size)
        self.shuffle, self.max_bad_fraction, self.return_keys = (
            shuffle,
            max_bad_fraction,
            return_keys,
        )
        self.bad_files = bad_files if bad_files is not None else []
        self._known_bad = {b.path for b in self.bad_files}
        stream = _ShardStream(
            shards,
            self.sampler,
            batch_size,
            shuffle,
            drop_last,
            transform,
            channels,
            num_classes,
            max(1, num_workers),
        )
        # batch_size=None: the workers make whole batches.
        self.loader = worker_loader(stream, num_workers, pin_memory, batch_size=None)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        unreadable: list[tuple[str, str]] = []
        for j, (x, y, names, bad) in enumerate(self.loader, start=self.sampler.start_batch):
            if bad:
                unreadable += bad
                self._note(bad, len(unreadable))
            if not len(y):
                if self.shuffle and bad:  # every rank must take this step: nothing to take
                    raise DataError(
                        f"every sample of training batch {j} is unreadable, e.g. {bad[0][0]}: "
                        f"{bad[0][1]}; fix or rewrite the shards"
                    )
                continue
            yield (x, y, names) if self.return_keys else (x, y)

    def _note(self, bad: list[tuple[str, str]], epoch_total: int) -> None:
        for path, reason in bad:
            if path not in self._known_bad:
                self._known_bad.add(path)
                self.bad_files.append(BadFile(path, reason))
                log.warning("unreadable sample skipped: %s: %s", path, reason)
        if epoch_total > self.max_bad_fraction * self.samples:
            listing = "\n  ".join(f"{b.path}: {b.reason}" for b in self.bad_files[:20])
            raise DataError(
                f"{epoch_total} of this epoch's {self.samples} samples cannot be read, more "
                f"than --max-bad-fraction {self.max_bad_fraction:g}:\n  {listing}\n"
                "Fix or rewrite the shards, or raise --max-bad-fraction to skip them."
            )


def shard_moments(
    shards: Shards, channels: int, limit: int | None = None, geometry=None
) -> np.ndarray:
    """``moments.image_moments`` (N, 2, C) of the first ``limit`` samples (all by default) in
    shard order, each decoded through ``geometry`` (PIL image -> uint8 tensor; None: at its
    own size); unreadable ones left out."""
    found = []
    samples = (x for p, n in zip(shards.files, shards.counts) for x in read_segment(p, 0, n))
    for name, sample in islice(samples, limit):
        ext = next((k for k in sample if k in IMAGE_KEYS), None)
        try:
            img = decode_image(sample[ext], channels, name) if ext else None
        except ImageDecodeError:
            img = None  # the loader reports it, once, when it meets it
        if img is not None:
            found.append(image_moments(geometry(img) if geometry else image_to_uint8(img))[0])
    return np.stack(found) if found else np.zeros((0, 2, channels))


def stream_stats(
    shards: Shards, channels: int, limit: int, geometry=None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the first ``limit`` samples in shard order, each image
    weighing the same (as ``stats.channel_stats``)."""
    return stats_from_moments(shard_moments(shards, channels, limit, geometry))
