"""How a ``Trainer`` builds itself: the settings (new or resumed), the seeds, the data pipeline,
the model with its weights, and its wrapping for DDP and ``--compile``."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts.run import RunDir
from ..artifacts.weight_sources import resolve_weights
from ..artifacts.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_into,
)
from ..core.device import resolve_device, resolve_precision
from ..core.errors import ConfigError
from ..data import DataError, DataPipeline, build_pipeline
from ..models import create_model
from ..tasks import task_of
from . import distributed as D
from .checkpoint import (
    load_for_resume,
    resolve_checkpoint_path,
)
from .config import explicit_settings, resume_config
from .features import FeatureCache
from .imbalance import resolve_class_weights
from .loggers import Progress
from .optim import (
    build_optimizer,
    build_scheduler,
)
from .state import RunProgress
from .swa import WeightAverager


class TrainerSetup:
    """The building half of ``Trainer``: everything ``__init__`` sets up."""

    def _build(self, cfg, resume, verbose, device, overrides) -> None:
        self.dist = D.init_distributed()
        self.resume_state = None
        self.weights_note = ""
        self.weight_source = None  # --weights, resolved with the preprocessing they carry
        self.eval_preprocess: dict = {}  # their evaluation resize, for model.json
        if resume is not None:
            if self.dist.is_main:  # before anything in it is read, cleared or written
                self._lock_run(resolve_checkpoint_path(resume).parent, resuming=True)
            path, self.resume_state = load_for_resume(resume)
            if overrides is None:
                overrides = explicit_settings(cfg) if cfg is not None else {}
            cfg = resume_config(
                self.resume_state["config"], overrides, int(self.resume_state["epoch"]), path.parent
            )
            cfg.out, cfg.name = str(path.parent.parent), path.parent.name
        elif cfg is None:
            raise ValueError("Trainer needs a TrainConfig, or a run to resume")
        cfg.check()
        self.cfg = cfg
        if device is None and self.dist.enabled and torch.cuda.is_available():
            device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.progress = Progress(verbose and self.dist.is_main)
        self.step_losses: list[float] = []
        self._seed_everything()
        self.data = self._build_data()
        self.classes = self.data.classes
        if len(self.classes) < 2:
            raise DataError(
                f"{cfg.data}: only one class ({self.classes[0]!r}); a classifier needs at least "
                "2 classes (one folder per class)"
            )
        self.task = task_of(self.data.source)
        self.multilabel = self.task.multilabel
        if cfg.class_weights != "none":
            self.task.require("class_weights")
        self.thresholds: list[float] | None = None  # multi-label: chosen at the end
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, cfg)
        self.train_loader, self.train_transform = self.data.split_loader(
            "train",
            train=True,
            channels_last=cfg.channels_last,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            pin_memory=self.device.type == "cuda",
            sampler=cfg.sampler,
        )
        if len(self.data.source.splits["train"]) < 2:
            raise ConfigError(f"{cfg.data}: training needs at least 2 images (BatchNorm)")
        if len(self.train_loader) == 0:
            raise ConfigError(
                f"{cfg.data}: {len(self.data.source.splits['train'])} training images make no "
                f"full batch of {cfg.batch_size} per process; lower --batch-size"
            )
        self.scheduler = build_scheduler(self.optimizer, cfg, len(self.train_loader))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.ema = copy.deepcopy(self.model).eval() if cfg.ema_decay > 0 else None
        self.swa = WeightAverager(self) if cfg.swa_epochs else None  # train/swa.py
        self.teacher = None  # --teacher: soft targets for each batch (train/distill.py)
        if cfg.teacher:  # checked before the run folder is claimed
            from .distill import load_teacher

            self.teacher = load_teacher(self)
        self.state = RunProgress()  # epoch, step, history, best epoch, time (train/state.py)
        self.partial_sums = None
        if self.resume_state is not None:
            self._restore(self.resume_state)
            self._saved = self._position()
        run_dir = self._claim_run_dir() if self.dist.is_main else None
        self.run_dir = Path(D.broadcast_object(str(run_dir), self.dist))
        self.run = RunDir(self.run_dir)
        if self.dist.is_main:
            self._prepare_run_dir()
        self.train_model = self._wrap(self.model)
        weights = resolve_class_weights(
            cfg.class_weights, self.classes, list(self.data.source.class_counts("train").values())
        )
        self.criterion = self.task.criterion(
            cfg.label_smoothing, None if weights is None else weights.to(self.device)
        )
        self._eval_loaders: dict = {}
        self.features: FeatureCache | None = None

    def _seed_everything(self) -> None:
        import random

        seed = self.cfg.seed + self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _build_data(self) -> DataPipeline:
        # Pretrained weights expect the normalisation they were trained with (their own,
        # else ImageNet's), unless --mean/--std say otherwise; a resumed run keeps its own.
        norm = None
        if self.cfg.weights and self.resume_state is not None:
            m = self.resume_state.get("model_meta") or {}
            norm = (m["mean"], m["std"]) if "mean" in m else (IMAGENET_MEAN, IMAGENET_STD)
            self.eval_preprocess = {k: m.get(k) for k in ("resize_size", "interpolation")}
        elif self.cfg.weights:
            self.weight_source = resolve_weights(self.cfg.weights, self.cfg.model)
            pre = self.weight_source.preprocess
            norm = (pre.mean, pre.std) if pre else (IMAGENET_MEAN, IMAGENET_STD)
        # A new run from scratch takes its input size from the images (32-pixel images are
        # not blown up to 224); saved in config.yaml, so --resume and --config keep it.
        fresh = not self.cfg.weights and self.resume_state is None
        pipe = build_pipeline(
            self.cfg.data_config(),
            seed=self.cfg.seed,
            default_norm=norm,
            size_from_data=fresh,
            progress=self.progress.enabled,
        )
        if pipe.size_note:
            self.cfg.input_size, self.cfg.preset = pipe.input_size, pipe.preset
        pre = self.weight_source.preprocess if self.weight_source else None
        if pre is not None and pipe.preset == "imagenet":
            # The weights' evaluation resize, scaled from their crop to this input size.
            self.eval_preprocess = {
                "resize_size": round(pipe.input_size * pre.resize_size / pre.crop_size),
                "interpolation": pre.interpolation,
            }
        if any(self.eval_preprocess.values()):  # validation resizes as predict will
            pipe.set_eval_preprocess(**self.eval_preprocess)
        pipe.prepare()  # every file decoded once, unreadable ones reported, before training
        return pipe

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        model = create_model(
            cfg.model,
            num_classes=len(self.classes),
            in_chans=self.data.channels,
            **cfg.model_kwargs,
        )
        if self.weight_source is not None:
            state, source = self.weight_source.state, self.weight_source.source
            info = load_into(model, state, source, skip_classifier=True)
            note = f"weights {source}: a new classifier for {len(self.classes)} classes"
            if info["adapted"]:
                have, want = info["adapted"]
                how = "its RGB filters summed" if want == 1 else "repeated and rescaled"
                note += f"; first conv from {have} to {want} input channels ({how})"
            if not cfg.mean:  # the normalisation the weights were trained with, said once
                mean = ", ".join(f"{v:.3g}" for v in self.data.mean)
                std = ", ".join(f"{v:.3g}" for v in self.data.std)
                note += f"; inputs normalised as the weights were trained (mean {mean}, std {std})"
            self.weights_note = note
        if cfg.sync_bn and self.device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA GPUs (SyncBatchNorm has no CPU kernel)")
        if self.dist.enabled and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Frozen stages have no gradient: DDP must not wait for them.
            wrapped = nn.parallel.DistributedDataParallel(
                model,
                device_ids=ids,
                find_unused_parameters=bool(
                    self.cfg.resolved_mode == "feature-extract" or self.cfg.unfreeze_schedule
                ),
            )
        if self.cfg.compile:
            if self.device.type == "cpu":
                # The compiler's C++ toolchain probe warns that no CUDA runtime is found, on
                # every CPU-only machine; nothing on a CPU run needs one.
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            wrapped = torch.compile(wrapped)
        return wrapped
