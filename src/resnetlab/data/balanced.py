"""``--sampler balanced``: batches in which every class is equally likely.

Each epoch draws as many indices as the split has, with replacement, each with probability
proportional to ``1 / count(its class)``, so a class of 10 images is drawn as often as one of
100 (the small class's images repeat, the big class's are subsampled). Like ``EpochSampler``
it is a function of (seed, epoch): a run resumed mid-epoch sees the same batches, and DDP
ranks take disjoint slices of one draw.
"""

from __future__ import annotations

import torch

from .loader import EpochSampler, mix_seed
from .sources import DataError

SAMPLERS = ("none", "balanced")


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample drawing weights ``1 / count(class)`` (float64, sums to the class count)."""
    labels = labels.long()
    if labels.numel() == 0:
        raise DataError("--sampler balanced: the training split is empty")
    counts = torch.bincount(labels).to(torch.float64)
    return 1.0 / counts[labels]


class BalancedSampler(EpochSampler):
    """Class-balanced batches of indices for one epoch; seeded by (seed, epoch); sharded."""

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(labels), batch_size, True, drop_last, seed, rank, world_size)
        self.weights = balanced_weights(labels)

    def _order(self) -> torch.Tensor:
        # Salt 5: other streams of the same (seed, epoch) (shuffle, augmentation) stay apart.
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 5))
        return torch.multinomial(self.weights, self.n, replacement=True, generator=g)


def make_sampler(
    kind: str,
    labels: torch.Tensor,
    batch_size: int,
    drop_last: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> EpochSampler:
    """The training sampler ``--sampler KIND`` asks for (``none``: the shuffling one)."""
    if kind == "balanced":
        return BalancedSampler(labels, batch_size, drop_last, seed, rank, world_size)
    if kind != "none":
        raise DataError(f"--sampler {kind!r} is not one of {', '.join(SAMPLERS)}")
    return EpochSampler(len(labels), batch_size, True, drop_last, seed, rank, world_size)
