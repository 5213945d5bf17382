"""From a DATA string and a few options to loaders and per-batch transforms for each split."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..core.options import option
from ..metrics.multilabel import TASKS
from .decode import decode_files
from .load import load_source
from .loader import (
    MEMORY_CACHE_BYTES,
    EpochSampler,
    FileLoader,
    TensorLoader,
    cache_geometry,
    cache_size,
)
from .moments import CHUNK_BYTES, image_moments, stats_from_moments
from .sources import DataError, Source, Split, check_ratios, keep_readable, settle_bad_files
from .stats import channel_stats
from .stream import ShardLoader, stream_stats
from .transforms import (
    AUTO_AUGMENTS,
    PRESETS,
    BatchTransform,
    default_preset,
    file_transform,
    size_from_images,
)

log = logging.getLogger(__name__)
CACHE_MODES = ("auto", "memory", "none")
# Mean/std from at most this many training files when they are not in memory and were not
# decoded by the pipeline itself (enough for three significant digits).
STATS_SAMPLE = 2000
# Room left under MEMORY_CACHE_BYTES for what is made while the cache fills: the statistics'
# integer chunks, and the images being decoded and resized.
TEMPORARY_BYTES = 16 * CHUNK_BYTES + 32 * 2**20


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared (the ``data`` flags of train)."""

    data: str = option(
        "digits",
        "digits, a folder, mnist:DIR, cifar10:DIR, cifar100:DIR, "
        "csv:FILE, jsonl:FILE, wds:DIR_OR_PATTERN",
        group="data",
    )
    task: str = option(
        "multiclass",
        "multilabel: several labels per image (csv:FILE with path,labels and | "
        "between labels, or jsonl:FILE), sigmoid outputs, per-class thresholds",
        choices=TASKS,
        group="data",
    )
    input_size: int | None = option(
        None,
        "square side fed to the model (default: for a new run from scratch on image "
        "files, chosen from their sizes: small images near their own size, photos 224; "
        "otherwise 224 for the imagenet preset, else 32)",
        group="data",
    )
    preset: str = option("auto", "augmentation preset", choices=("auto", *PRESETS), group="data")
    auto_augment: str = option(
        "none", "batch auto-augmentation", choices=AUTO_AUGMENTS, group="data"
    )
    random_erasing: float = option(0.0, "probability per image", group="data")
    mean: list[float] | None = option(
        None, "per-channel mean (default: the training split's)", group="data"
    )
    std: list[float] | None = option(None, "per-channel std", group="data")
    batch_size: int = option(128, "images per step (per process)", group="recipe")
    num_workers: int = option(2, "loader worker processes for files not in memory", group="system")
    val_ratio: float = option(
        0.1, "held out for validation when the data has no val split", group="data"
    )
    test_ratio: float = option(0.1, "held out for testing from a single folder", group="data")
    max_bad_fraction: float = option(
        0.01, "abort when more files than this are unreadable", group="data"
    )
    exclude: str | None = option(
        None,
        "a file of images to leave out, one a line (what `resnetlab audit --write-exclude` writes)",
        metavar="FILE",
        group="data",
    )
    relabel: str | None = option(
        None,
        "a CSV of path,label giving images another label (what `resnetlab audit "
        "--write-relabel` writes, after you checked it)",
        metavar="FILE",
        group="data",
    )
    cache: str = option(
        "auto", "decode once into memory (auto: when it fits)", choices=CACHE_MODES, group="data"
    )
    download: bool = option(False, "fetch MNIST/CIFAR when online", group="data")
    in_chans: int | None = option(
        None, "force greyscale (1) or RGB (3)", choices=(1, 3), group="data"
    )
    # The evaluation resize of the model's weights (ModelMeta.resize_size); set by evaluate.
    eval_resize: int | None = option(None, flag=False)
    eval_interpolation: str | None = option(None, flag=False)  # ModelMeta.interpolation

    def check(self) -> None:
        if self.preset != "auto" and self.preset not in PRESETS:
            raise DataError(f"--preset {self.preset!r} is not one of auto, {', '.join(PRESETS)}")
        if self.auto_augment not in AUTO_AUGMENTS:
            raise DataError(
                f"--auto-augment {self.auto_augment!r} is not one of {', '.join(AUTO_AUGMENTS)}"
            )
        if self.cache not in CACHE_MODES:
            raise DataError(f"--cache {self.cache!r} is not one of {', '.join(CACHE_MODES)}")
        if self.input_size is not None and self.input_size < 1:
            raise DataError(f"--input-size must be at least 1, got {self.input_size}")
        if self.task not in TASKS:
            raise DataError(f"--task {self.task!r} is not one of {', '.join(TASKS)}")
        check_ratios(self.val_ratio, self.test_ratio)
        if self.batch_size < 1:
            raise DataError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise DataError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.in_chans not in (None, 1, 3):
            raise DataError(f"--in-chans must be 1 or 3, got {self.in_chans}")


class DataPipeline:
    """A loaded source plus everything needed to batch it: preset, size, normalisation."""

    def __init__(
        self,
        source: Source,
        cfg: DataConfig,
        seed: int = 0,
        default_norm: tuple | None = None,
        size_from_data: bool = False,
        progress: bool = True,
    ) -> None:
        """``default_norm`` (RGB mean, std), e.g. a pretrained model's, replaces statistics
        computed from the training split when --mean/--std are not given. ``size_from_data``
        (a new run from scratch): with ``preset`` auto and no ``input_size``, both come from
        the training images' sizes (``size_from_images``); ``size_note`` then says so.
        ``progress``: show the progress of decoding files (``progress.Meter``, on stderr)."""
        self.source, self.cfg, self.seed = source, cfg, seed
        self.preset = default_preset(source.kind) if cfg.preset == "auto" else cfg.preset
        self.input_size = cfg.input_size or (224 if self.preset == "imagenet" else 32)
        self.size_note = ""  # why the input size is what it is, when it came from the images
        train = source.splits.get("train")
        if (
            size_from_data
            and cfg.preset == "auto"
            and cfg.input_size is None
            and train
            and (train.sizes)
        ):
            self.preset, self.input_size, side = size_from_images(train.sizes, source.channels)
            self.size_note = f"from the images: median side {side} px"
        self.channels = source.channels
        self.progress = progress
        # The in-memory cache of all splits together, and what is made while it fills, stay
        # under MEMORY_CACHE_BYTES (--cache auto).
        self._cache_left = MEMORY_CACHE_BYTES - TEMPORARY_BYTES
        self._train_moments = None  # image_moments of the training files, when decoded here
        need_stats = (cfg.mean is None or cfg.std is None) and default_norm is None
        self._maybe_cache(("train",), moments=need_stats)
        if cfg.mean is not None and cfg.std is not None:
            self.mean, self.std = list(cfg.mean), list(cfg.std)
        elif default_norm is not None:
            mean, std = (list(map(float, v)) for v in default_norm)
            if self.channels == 1:  # greyscale input to an RGB-trained model: the average
                mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
            elif len(mean) == 1:  # RGB input to a greyscale-trained model: the same per channel
                mean, std = mean * self.channels, std * self.channels
            self.mean, self.std = mean, std
        else:
            self.mean, self.std = self._train_stats()
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(
                f"--mean/--std give {len(self.mean)}/{len(self.std)} values but the data has "
                f"{self.channels} channel(s)"
            )

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    def split_loader(self, split: str, train: bool = False, channels_last: bool = True, **kwargs):
        """(loader, batch transform) for ``split``: the loader's uint8 batches become model
        inputs only through the transform made for that loader (it applies the geometry the
        loader left to the batch). ``kwargs`` go to ``loader``."""
        loader = self.loader(split, train=train, **kwargs)
        return loader, self.batch_transform(train, loader.geometric, channels_last)

    def _maybe_cache(self, names: tuple[str, ...] = ("train",), moments: bool = False) -> None:
        """Decode the files of the splits ``names`` once each, for everything at once: the
        check that they can be read (``load_source(check=False)`` left it to this), their
        square in memory when the cache has room, and with ``moments`` the training images'
        statistics. The training split is kept with room for random crops; a held-out split
        is decoded exactly as ``predict`` decodes a file (``file_transform``: the evaluation
        resize, crop and interpolation), the first time a loader asks for it (or at
        ``prepare``), so that the evaluation resize of the model's weights
        (``set_eval_preprocess``) is known by then. Unreadable files leave their split and
        are reported (``sources.settle_bad_files``: too many stop the run)."""
        for name in names:
            split = self.source.splits.get(name)
            if split is None or split.in_memory or split.streamed:  # shards stream
                continue
            train = name == "train"
            side = cache_size(self.preset, self.input_size) if train else self.input_size
            need = len(split) * self.channels * side * side
            cache = self.cfg.cache == "memory" or (
                self.cfg.cache == "auto" and need <= self._cache_left
            )
            want = moments and train
            if not (cache or want or not split.checked):
                continue
            if train:
                geometry = cache_geometry(self.preset, self.input_size)
            else:
                geometry = file_transform(
                    self.preset,
                    side,
                    train=False,
                    resize_size=self.cfg.eval_resize,
                    interpolation=self.cfg.eval_interpolation,
                )
            self._decode(name, geometry, side, cache, want)
        settle_bad_files(self.source)

    def _decode(self, name: str, geometry, side: int, cache: bool, moments: bool) -> None:
        """The one decode of split ``name``'s files: into a uint8 (N, C, side, side) tensor
        filled in place (``cache``; never a list of images stacked afterwards), their
        ``image_moments`` (``moments``), and the check of each."""
        split = self.source.splits[name]
        n, c = len(split), self.channels
        images = torch.empty((n, c, side, side), dtype=torch.uint8) if cache else None

        def take(i, img):
            x = geometry(img)
            if images is not None:
                images[i].copy_(x)
            return image_moments(x)[0] if moments else None

        if cache:
            self._cache_left -= n * c * side * side
            log.info("decoding %d %s images into memory at %dx%d", n, name, side, side)
            desc = f"decoding {name} images into memory at {side}x{side}"
        else:
            desc = f"reading {name} images" if moments else f"checking {name} images"
        results = decode_files(
            split.paths, c, take if cache or moments else None, desc if self.progress else None
        )
        keep = keep_readable(self.source, name, results)
        if images is not None:
            if len(keep) < n:  # close the gaps the unreadable files left, in place
                for j, i in enumerate(keep):
                    if i != j:
                        images[j] = images[i]
                images = images[: len(keep)]
            self.source.splits[name].images = images
        if moments:
            found = [results[i] for i in keep]
            self._train_moments = np.stack(found) if found else np.zeros((0, 2, c))

    def prepare(self) -> None:
        """Decode (check, and cache where it fits) every split now, before training, rather
        than when its first loader is made; after ``set_eval_preprocess``."""
        self._maybe_cache(tuple(self.source.splits))

    def set_eval_preprocess(
        self, resize_size: int | None = None, interpolation: str | None = None
    ) -> None:
        """The evaluation resize of the model's weights (``ModelMeta.resize_size`` and
        ``interpolation``): held-out splits are then decoded and resized as ``predict``
        decodes a file for that model. Before the first loader of a held-out split."""
        self.cfg.eval_resize, self.cfg.eval_interpolation = resize_size, interpolation

    def _train_stats(self) -> tuple[list[float], list[float]]:
        if "train" not in self.source.splits:
            raise DataError(
                f"{self.source.name} has no train split to take --mean/--std from; give them"
            )
        # Each image weighs the same, at the training resolution (see stats' module doc).
        if self._train_moments is not None:
            return stats_from_moments(self._train_moments)
        train = self.source.splits["train"]
        geometry = cache_geometry(self.preset, self.input_size)
        if train.shards is not None:
            if train.shards.mean is not None and len(train.shards.mean) == self.channels:
                return list(train.shards.mean), list(train.shards.std)  # from the index
            return stream_stats(train.shards, self.channels, STATS_SAMPLE, geometry)
        if train.in_memory:
            return stats_from_moments(image_moments(train.images))
        if len(train) > STATS_SAMPLE:
            g = torch.Generator().manual_seed(self.seed)
            train = train.subset(torch.randperm(len(train), generator=g)[:STATS_SAMPLE])
        return channel_stats([train], self.channels, geometry)

    def loader(
        self,
        split: str,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        pin_memory=False,
        sampler: str = "none",
    ):
        """Batches of (uint8 images, labels); ``train`` shuffles and drops a short last batch;
        ``sampler="balanced"`` draws every class equally often in training."""
        if split not in self.source.splits:
            raise DataError(
                f"{self.source.name} has no {split!r} split (it has "
                f"{', '.join(self.source.splits)})"
            )
        self._maybe_cache((split,))
        data: Split = self.source.splits[split]
        drop_last = train and len(data) > self.cfg.batch_size
        tf = file_transform(
            self.preset,
            self.input_size,
            train,
            self.cfg.auto_augment,
            resize_size=self.cfg.eval_resize,
            interpolation=self.cfg.eval_interpolation,
        )
        if data.shards is not None:
            if sampler != "none":
                raise DataError(
                    "--sampler balanced needs the labels up front; wds: shards stream them"
                )
            return ShardLoader(
                data.shards,
                self.cfg.batch_size,
                shuffle=train,
                drop_last=drop_last,
                transform=tf,
                channels=self.channels,
                num_classes=len(self.classes),
                seed=self.seed,
                rank=rank,
                world_size=world_size,
                num_workers=self.cfg.num_workers,
                pin_memory=pin_memory,
                max_bad_fraction=self.cfg.max_bad_fraction,
                bad_files=self.source.bad_files,
            )
        if train and sampler != "none":
            self.source.task.require("sampler", DataError)
            from .balanced import make_sampler

            batches = make_sampler(
                sampler, data.labels, self.cfg.batch_size, drop_last, self.seed, rank, world_size
            )
        else:
            batches = EpochSampler(
                len(data),
                self.cfg.batch_size,
                shuffle=train,
                drop_last=drop_last,
                seed=self.seed,
                rank=rank,
                world_size=world_size,
            )
        if data.in_memory:
            return TensorLoader(data, batches, self.cfg.auto_augment if train else None)
        return FileLoader(data, batches, tf, self.channels, self.cfg.num_workers, pin_memory)

    def batch_transform(self, train: bool, geometric: bool, channels_last: bool = True):
        return BatchTransform(
            self.preset,
            self.input_size,
            self.mean,
            self.std,
            train=train,
            geometric=geometric,
            random_erasing=self.cfg.random_erasing if train else 0.0,
            channels_last=channels_last,
            resize_size=self.cfg.eval_resize,
            interpolation=self.cfg.eval_interpolation,
        )


def build_pipeline(
    cfg: DataConfig,
    seed: int = 0,
    default_norm: tuple | None = None,
    size_from_data=False,
    progress: bool = True,
):
    """The pipeline of ``cfg.data``, each image file decoded once (see ``DataPipeline``)."""
    cfg.check()
    source = load_source(
        cfg.data,
        val_ratio=cfg.val_ratio,
        test_ratio=cfg.test_ratio,
        seed=seed,
        download=cfg.download,
        channels=cfg.in_chans,
        max_bad_fraction=cfg.max_bad_fraction,
        task=cfg.task,
        check=False,  # the pipeline decodes each file once: check, cache and statistics
    )
    if cfg.exclude or cfg.relabel:  # the user's files: nothing on disk changes
        from .curate import apply_curation

        source = apply_curation(source, cfg.exclude, cfg.relabel)
    return DataPipeline(source, cfg, seed, default_norm, size_from_data, progress)
