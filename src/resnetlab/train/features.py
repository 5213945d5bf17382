"""Cached features for a frozen backbone (``--mode feature-extract``).

Nothing below the head changes in feature extraction, so the backbone's pooled features of
each training image are computed once (BatchNorm in eval mode, as the frozen backbone runs
in training) and every epoch trains the head on them: one backbone forward per image for the
whole run instead of one per image per epoch. ``--feature-views N`` keeps N augmented views
of each image (the training transform, seeded per view), epoch e training on view e mod N;
0 keeps the unaugmented images (the evaluation transform), and then the head ends as it
would with the frozen backbone run on those images every epoch (a test holds them equal).

The cache stays in memory up to ``MEMORY_LIMIT`` bytes, beyond that it is a file in the run
folder, mapped into memory. It is rebuilt on resume (the backbone is the checkpoint's, so
the features are the same) and never saved in a checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..core.device import autocast
from ..data import DataPipeline
from ..data.loader import EpochSampler, FileLoader, TensorLoader, mix_seed
from ..data.transforms import file_transform
from . import distributed as D

# Features of 2 GiB: 1 M images x 512 floats (resnet18/34), 250 k x 2048 (resnet50).
MEMORY_LIMIT = 2 * 2**30
FILE_NAME = "feature-cache.f32"  # in the run folder, when the cache outgrows MEMORY_LIMIT


def can_cache(cfg, data: DataPipeline) -> bool:
    """The cache needs a frozen backbone, images it can index (not streamed shards) and no
    image-space mixing (CutMix pastes pixels; Mixup of images is not Mixup of features)."""
    return (
        cfg.resolved_mode == "feature-extract"
        and cfg.feature_cache
        and not data.source.splits["train"].streamed
        and cfg.mixup == 0
        and cfg.cutmix == 0
    )


class FeatureCache:
    """Pooled features (views, N, F) of the training split and its labels (N,)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, seconds: float) -> None:
        self.features, self.labels, self.seconds = features, labels, seconds

    @property
    def views(self) -> int:
        return self.features.shape[0]

    def batches(
        self, sampler: EpochSampler, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches the training loader would give this epoch, as (features, labels)."""
        view = self.features[epoch % self.views]
        for idx in sampler:
            index = torch.tensor(idx)
            yield view[index], self.labels[index]


def _view_loader(data: DataPipeline, view: int | None, batch: int, workers: int):
    """(loader, batch transform, seed of batch b) over the training split in its own order:
    the unaugmented images (``view`` None) or augmented view number ``view``."""
    split = data.source.splits["train"]
    train = view is not None
    sampler = EpochSampler(len(split), batch, shuffle=False, drop_last=False, seed=data.seed)
    # Files get their per-sample augmentation from (seed, epoch, index): the view is the epoch.
    sampler.set_epoch(view or 0)
    auto = data.cfg.auto_augment if train else None
    if split.in_memory:
        loader = TensorLoader(split, sampler, auto)
    else:
        tf = file_transform(data.preset, data.input_size, train, auto)
        loader = FileLoader(split, sampler, tf, data.channels, workers)
    transform = data.batch_transform(train, loader.geometric, channels_last=True)
    return loader, transform, lambda b: mix_seed(data.seed, view or 0, b, 7)


@torch.inference_mode()
def build_cache(
    model: nn.Module,
    data: DataPipeline,
    views: int,
    device: torch.device,
    precision: str,
    batch_size: int,
    folder: Path | None = None,
    limit: int = MEMORY_LIMIT,
) -> FeatureCache:
    """Run the backbone (eval mode) over every training image once per view."""
    start = time.perf_counter()
    split = data.source.splits["train"]
    n, dim = len(split), model.num_features
    shape = (max(views, 1), n, dim)
    numel = shape[0] * n * dim
    if numel * 4 > limit and folder is not None:
        path = folder / FILE_NAME
        path.unlink(missing_ok=True)
        feats = torch.from_file(str(path), shared=True, size=numel).view(shape)
    else:
        feats = torch.empty(shape)
    was_training = model.training
    model.eval()
    # Decoding files in this process reseeds the global generator: keep the run's stream.
    with torch.random.fork_rng(devices=[]):
        for v in range(shape[0]):
            loader, tf, seed_of = _view_loader(
                data, v if views else None, batch_size, data.cfg.num_workers
            )
            row = 0
            for b, (x, _) in enumerate(loader):
                x = x.to(device, non_blocking=True)
                g = torch.Generator(device=device).manual_seed(seed_of(b))
                with autocast(precision, device):
                    f = model.forward_pooled(tf(x, g))
                feats[v, row : row + len(f)] = f.float().cpu()
                row += len(f)
    model.train(was_training)
    return FeatureCache(feats, split.labels.clone(), time.perf_counter() - start)


def sync_head_grads(head: nn.Module, dist: D.DistInfo) -> None:
    """Under DDP, the head trained on features runs outside the DDP wrapper: average its
    gradients over the ranks by hand, as DDP would."""
    if not dist.enabled:
        return
    for p in head.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(dist.world_size)
