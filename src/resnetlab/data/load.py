"""``DATA`` strings to data sets: the one place that knows every form (digits, folders, CSV,
MNIST, CIFAR, WebDataset shards); the readers live in ``sources`` (files on disk), ``formats``
(originals) and ``wds`` (shards)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..metrics.multilabel import TASKS, is_multilabel
from ..tasks import task_of
from .formats import load_cifar_source, load_mnist_source
from .listings import load_listing_source
from .sources import (
    DataError,
    Source,
    check_ratios,
    load_digits_source,
    load_folder_source,
)
from .wds import load_wds_source


def load_source(
    data: str = "digits",
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    download: bool = False,
    channels: int | None = None,
    max_bad_fraction: float = 0.01,
    task: str = "multiclass",
    check: bool = True,
) -> Source:
    """Parse a DATA string and load it. ``channels`` forces 1 (greyscale) or 3 (RGB).
    ``task`` "multilabel": several labels per image, from ``csv:FILE`` or ``jsonl:FILE``.
    ``check`` False: image files are only listed and their headers read; their pixels are
    decoded later, once (``DataPipeline``, ``dataset_stats``, ``sources.check_splits``)."""
    if task not in TASKS:
        raise DataError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    multilabel = is_multilabel(task)
    task_of(task).check_data(data)
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise DataError(f"--max-bad-fraction must be in [0, 1], got {max_bad_fraction}")
    check_ratios(val_ratio, test_ratio)
    kind, _, rest = data.partition(":")
    if data == "digits":
        source = load_digits_source()
    elif kind == "mnist" and rest:
        source = load_mnist_source(Path(rest), val_ratio, seed, download)
    elif kind in ("cifar10", "cifar100") and rest:
        source = load_cifar_source(Path(rest), int(kind[5:]), val_ratio, seed, download)
    elif kind == "wds" and rest:
        source = load_wds_source(rest)
    elif kind == "memory" and rest:  # images a Python caller handed over (resnetlab.fit)
        from .memory import load_memory_source

        source = load_memory_source(rest, val_ratio, test_ratio, seed)
    elif kind in ("hf", "hf-disk") and rest:  # Hugging Face datasets
        from .hf import load_hf_source

        source = load_hf_source(kind, rest, val_ratio, test_ratio, seed, channels, multilabel)
    elif kind == "hf-stream" and rest:  # too large to load: read once into cached shards
        from .hf_stream import load_hf_stream

        source = load_hf_stream(rest, val_ratio, test_ratio, seed, multilabel)
    elif kind in ("csv", "jsonl") and rest:
        source = load_listing_source(
            kind,
            Path(rest),
            val_ratio,
            test_ratio,
            seed,
            channels or 3,
            max_bad_fraction,
            multilabel,
            check,
        )
    else:
        folder = Path(data)
        if not folder.exists():
            raise DataError(
                f"DATA {data!r} is not a folder or one of: digits, mnist:DIR, cifar10:DIR, "
                "cifar100:DIR, csv:FILE, jsonl:FILE, wds:DIR_OR_PATTERN, hf:NAME[:CONFIG], "
                "hf-stream:NAME[:CONFIG], hf-disk:PATH"
            )
        source = load_folder_source(
            folder, val_ratio, test_ratio, seed, channels or 3, max_bad_fraction, check
        )
    if channels is not None and channels != source.channels:
        source = _convert_channels(source, channels)
    return source


def _convert_channels(source: Source, channels: int) -> Source:
    """Greyscale <-> RGB for in-memory sources (ITU-R 601 luma, as Pillow's convert('L'))."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    for s in source.splits.values():
        if s.images is None:
            continue
        if channels == 3:
            s.images = s.images.expand(-1, 3, -1, -1).contiguous()
        else:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            s.images = (s.images.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
    source.channels = channels
    return source
