"""The training loop: short named functions around one ``Trainer`` that owns the run state."""

from __future__ import annotations

import contextlib
import copy
import errno
import itertools
import json
import logging
import re
import signal
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..artifacts.run import ModelMeta, RunDir
from ..artifacts.weight_sources import resolve_weights
from ..artifacts.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_into,
    save_bundle,
    unwrap_model,
)
from ..core.device import autocast, resolve_device, resolve_precision
from ..core.errors import ConfigError, FileConflictError, WriteError
from ..core.files import WRITE_CAUSES, FolderLock, atomic_write_text, writing
from ..core.fmt import pct, shell_command
from ..data import DataError, DataPipeline, build_pipeline
from ..data.loader import mix_seed
from ..data.sources import class_name
from ..data.stats import imbalance_note
from ..metrics.fingerprint import weights_fingerprint
from ..metrics.multilabel import multilabel_loss, smoothed_targets
from ..models import create_model
from . import distributed as D
from .accumulate import accumulate_gradients
from .calibration import best_weights, calibrate_run, fit_thresholds, multilabel_test
from .checkpoint import (
    capture_rng,
    load_checkpoint,
    load_for_resume,
    resolve_checkpoint_path,
    restore_rng,
    save_checkpoint,
)
from .config import TrainConfig, dump_yaml, explicit_settings, resume_config
from .features import FeatureCache, build_cache, can_cache, sync_head_grads
from .imbalance import resolve_class_weights
from .loggers import MetricsCSV, Progress, TensorBoard
from .metrics import evaluate_loader
from .mixing import mix_batch
from .optim import (
    apply_freezing,
    build_optimizer,
    build_scheduler,
    frozen_groups,
    recipe_line,
    set_train_mode,
)
from .pacing import eval_size, plan_for_budget, resized, train_size
from .precise_bn import recompute_bn_stats
from .swa import WeightAverager
from .tally import EpochTally, NonFiniteLoss
from .trackers import records_outcome

__all__ = ["LOG_EVERY", "NonFiniteLoss", "RunStopped", "Trainer", "evaluate_loader"]

LOG_EVERY = 20  # steps between progress updates (each one is a host sync on CUDA)


class RunStopped(Exception):
    """Training stopped on purpose (--max-steps, Ctrl-C, SIGTERM) after a resumable
    checkpoint; ``signum``: the signal that stopped it (None: --max-steps)."""

    def __init__(self, message: str, run_dir: Path, signum: int | None = None) -> None:
        super().__init__(message)
        self.run_dir, self.signum = run_dir, signum

    @property
    def interrupted(self) -> bool:
        return self.signum is not None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def _run_name(cfg: TrainConfig) -> str:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data.split(":")[-1]).name or cfg.data)
    return f"{cfg.model}-{tag.strip('-') or 'data'}-{datetime.now():%Y%m%d-%H%M%S}"


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on each class's logit (multi-hot targets), smoothed as timm's."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return multilabel_loss(logits, smoothed_targets(targets.float(), self.smoothing))


class Trainer:
    """Builds everything from a ``TrainConfig`` (or a checkpoint to resume) and runs ``fit``."""

    def __init__(
        self,
        cfg: TrainConfig | None = None,
        resume: str | Path | None = None,
        verbose: bool = True,
        device: torch.device | None = None,
        overrides: dict | None = None,
    ) -> None:
        """``resume``: a run folder or checkpoint to continue with its saved settings; only
        the settings in ``overrides`` (the flags given; by default those of ``cfg`` that differ
        from the defaults) may change, and only those a resumed run can change.

        The run folder is locked from here until ``fit`` ends (or ``close``): a second
        training of the same folder, new or resumed, is refused while this one holds it."""
        self._lock: FolderLock | None = None
        self._signal: int | None = None  # SIGINT or SIGTERM received by this process
        self._stop_signal: int | None = None  # the one every rank agreed to stop on
        self._saved: int | None = None  # the epoch of the last checkpoint this run wrote
        try:
            self._build(cfg, resume, verbose, device, overrides)
        except WriteError as exc:
            self.close()
            raise self._write_failed(exc) from None
        except BaseException:
            self.close()
            raise

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
        self.multilabel = self.data.source.multilabel
        if self.multilabel and cfg.class_weights != "none":
            raise ConfigError(
                "--class-weights weighs the classes of single-label data; a multi-label image "
                "carries several at once (leave --class-weights at none)"
            )
        self.thresholds: list[float] | None = None  # multi-label: chosen at the end
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, cfg)
        self.train_loader, self.train_transform = self.data.split_loader(
            "train", train=True, channels_last=cfg.channels_last,
            rank=self.dist.rank, world_size=self.dist.world_size,
            pin_memory=self.device.type == "cuda", sampler=cfg.sampler,
        )  # fmt: skip
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
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.partial_sums = None
        self.history: list[dict] = []
        self.best = {"epoch": None, "val_top1": None, "score": None}
        self.train_seconds, self.train_images = 0.0, 0
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
        if self.multilabel:
            self.criterion = MultiLabelLoss(cfg.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss(
                weight=None if weights is None else weights.to(self.device),
                label_smoothing=cfg.label_smoothing,
            )
        self._eval_loaders: dict = {}
        self.features: FeatureCache | None = None

    # ----------------------------------------------------------------------------- setup

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
        pipe = build_pipeline(self.cfg.data_config(), seed=self.cfg.seed, default_norm=norm,
                              size_from_data=fresh,
                              progress=self.progress.enabled)  # fmt: skip
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
                model, device_ids=ids, find_unused_parameters=bool(
                    self.cfg.resolved_mode == "feature-extract" or self.cfg.unfreeze_schedule
                ),
            )  # fmt: skip
        if self.cfg.compile:
            if self.device.type == "cpu":
                # The compiler's C++ toolchain probe warns that no CUDA runtime is found, on
                # every CPU-only machine; nothing on a CPU run needs one.
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            wrapped = torch.compile(wrapped)
        return wrapped

    def _claim_run_dir(self) -> Path:
        """The run folder, claimed before anything is written in it: a folder of the default
        name is created exclusively (with -2, -3, ... when a run started in the same second
        has it), a named one is locked (and refused by ``_prepare_run_dir`` when it holds a
        run). A resumed run's folder was locked before its checkpoint was read."""
        cfg = self.cfg
        out = Path(cfg.out)
        if self.resume_state is not None:
            return out / cfg.name
        with writing(out, "create the folder"):
            out.mkdir(parents=True, exist_ok=True)
        if cfg.name:
            d = out / cfg.name
            try:
                with writing(d, "create the folder"):
                    d.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise FileConflictError(
                    f"{d} is a file, not a run folder; pick another --name"
                ) from None
            self._lock_run(d)
            return d
        base = _run_name(cfg)
        for n in itertools.count(1):
            d = out / (base if n == 1 else f"{base}-{n}")
            try:
                with writing(d, "create the folder"):
                    d.mkdir()  # exclusive: of two runs started together, one gets it
            except FileExistsError:
                continue
            self._lock_run(d)
            return d
        raise AssertionError("unreachable")

    def _lock_run(self, d: Path, resuming: bool = False) -> None:
        """Hold ``d`` for this run; another training holding it is refused in one line."""
        lock_file = RunDir(d).lock
        try:
            lock = FolderLock.acquire(lock_file)
        except WriteError as exc:
            if not resuming or exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            err = WriteError(
                f"cannot write in {d}: {WRITE_CAUSES[exc.errno]}; a resumed run writes its "
                "checkpoints there: make it writable, or copy the run somewhere writable and "
                "resume the copy",
                exc.errno,
                exc.filename,
            )
            err.advised = True
            raise err from None
        if lock is None:
            pid = FolderLock.holder(lock_file)
            then = "resume it once that one has stopped" if resuming else (
                "wait for it to end, or pick another --name"
            )  # fmt: skip
            raise FileConflictError(
                f"{d} is in use by another training{f' (process {pid})' if pid else ''}; {then}"
            )
        self._lock = lock

    def close(self) -> None:
        """Let go of the run folder (``fit`` does when it ends); the trainer stays usable."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _write_failed(self, exc: WriteError) -> WriteError:
        """``exc`` (a full disk, no permission, a read-only mount) with what to do next: the
        last checkpoint, which atomic writes leave intact, and the command that continues."""
        if getattr(exc, "advised", False):
            return exc
        run = getattr(self, "run", None)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if run is None:  # the run folder itself could not be made
            fix = "free some space" if full else "give --out a folder you can write to"
            return WriteError(f"{exc}; {fix}", exc.errno, exc.filename)
        fix = "free some space" if full else f"make {run.path} writable"
        if run.last_checkpoint.is_file():
            when = f" ({self._saved})" if self._saved else ""
            msg = (f"{exc}; {run.LAST_CHECKPOINT}{when} is intact: {fix}, then continue with: "
                   + shell_command("resnetlab", "train", "--resume", run.path))  # fmt: skip
        else:
            msg = f"{exc}; {fix}, then run the same command again (the folder is reused)"
        return WriteError(msg, exc.errno, exc.filename)

    def _prepare_run_dir(self) -> None:
        run, d = self.run, self.run_dir
        if self.resume_state is None and not run.only_startup_files():
            raise FileConflictError(
                f"{d} already holds files; resume it with "
                + shell_command("resnetlab", "train", "--resume", d)
                + ", or pick another --name"
            )
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, dump_yaml(self.cfg))
        self.metrics_csv = MetricsCSV(run.metrics)
        self.tb = TensorBoard(d) if self.cfg.tensorboard else None

    def _restore(self, s: dict) -> None:
        # Class names are read in NFC now; a run saved with a folder's NFD name still matches.
        if [class_name(c) for c in s["classes"]] != list(self.classes):
            raise ConfigError(
                f"the data's classes {self.classes[:5]}... differ from the checkpoint's "
                f"{list(s['classes'])[:5]}...; resume with the data the run was trained on"
            )
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        if self.scaler is not None and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        if self.ema is not None and s.get("ema"):
            self.ema.load_state_dict(s["ema"])
        if self.swa is not None:
            self.swa.restore(s)
        self.epoch, self.step_in_epoch = int(s["epoch"]), int(s.get("step_in_epoch", 0))
        self.global_step = int(s.get("global_step", 0))
        self.partial_sums = s.get("partial_sums") if self.dist.is_main else None
        self.history = list(s.get("history", []))
        self.best = dict(s.get("best", self.best))
        self.train_seconds = float(s.get("train_seconds", 0.0))
        self.train_images = int(s.get("train_images", 0))
        restore_rng(s["rng"])

    # ------------------------------------------------------------------------ metadata

    def model_meta(self) -> ModelMeta:
        c, size = self.data.channels, self.data.input_size
        return ModelMeta(
            model=self.cfg.model, num_classes=len(self.classes), in_chans=c,
            classes=list(self.classes), input_size=[c, size, size], mean=list(self.data.mean),
            std=list(self.data.std), preset=self.data.preset,
            model_kwargs=dict(self.cfg.model_kwargs), weights=self.cfg.weights,
            resnetlab_version=__version__, **self.eval_preprocess,
            task="multilabel" if self.multilabel else None, thresholds=self.thresholds,
        )  # fmt: skip

    def _checkpoint_state(self, sums: torch.Tensor | None = None) -> dict:
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "partial_sums": sums.detach().cpu() if sums is not None else None,
            "rng": capture_rng(),
            "classes": list(self.classes),
            "config": self.cfg.to_dict(),
            "model_meta": self.model_meta().to_json(),
            "history": self.history,
            "best": dict(self.best),
            "train_seconds": self.train_seconds,
            "train_images": self.train_images,
            **(self.swa.state() if self.swa is not None else {}),
            **({"teacher_sha256": self.teacher.sha256} if self.teacher is not None else {}),
        }

    def save(self, path: Path, sums: torch.Tensor | None = None) -> None:
        """A checkpoint at ``path`` (one of the run's); ``sums``: the epoch's running sums,
        for a checkpoint written mid-epoch."""
        if self.dist.is_main:
            save_checkpoint(self._checkpoint_state(sums), path)
            if path == self.run.last_checkpoint:
                self._saved = self._position()

    def _position(self) -> str:
        if self.step_in_epoch:
            return f"epoch {self.epoch + 1}, step {self.step_in_epoch}"
        return f"after epoch {self.epoch}"

    # -------------------------------------------------------------------------- loops

    def train_step(self, x, y, tf, i: int):
        """Forward, backward, optimizer step for batch ``i`` of the current epoch. ``tf``
        None: ``x`` holds cached backbone features, and only the head runs."""
        cfg, model = self.cfg, self.train_model
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if tf is None:
            model = unwrap_model(model).forward_head
        else:
            seed = mix_seed(cfg.seed, self.dist.rank, self.epoch, i, 3)
            x = tf(x, torch.Generator(device=self.device).manual_seed(seed))
        seed = mix_seed(cfg.seed, self.dist.rank, self.epoch, i, 4)
        x, ya, yb, lam = mix_batch(x, y, cfg.mixup, cfg.cutmix, seed)
        soft = self.teacher.logits(x) if self.teacher is not None and tf is not None else None

        def loss_of(out: torch.Tensor, rows: slice) -> torch.Tensor:
            loss = self.criterion(out, ya[rows])
            if lam < 1.0:
                loss = lam * loss + (1 - lam) * self.criterion(out, yb[rows])
            if soft is not None:
                loss = self.teacher.loss(loss, out, soft[rows])
            return loss

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            with autocast(self.precision, self.device):
                return model(inputs)

        self.optimizer.zero_grad(set_to_none=True)
        backward = (lambda t: self.scaler.scale(t).backward()) if self.scaler else None
        loss, out = accumulate_gradients(
            model, x, loss_of, cfg.accum_steps, backward or torch.Tensor.backward, forward
        )
        if tf is None:
            sync_head_grads(unwrap_model(self.model).get_classifier(), self.dist)
        self._optimizer_step(unwrap_model(self.model) if tf is None else model)
        return loss, out, ya

    def _optimizer_step(self, model: nn.Module) -> None:
        """Clip (when asked) and step, through the GradScaler under fp16."""
        cfg = self.cfg
        if self.scaler is not None:
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            self.optimizer.step()

    def train_one_epoch(self) -> dict:
        """One pass over the training data (the rest of it, after a mid-epoch resume); returns
        the epoch's training loss, top-1 and seconds."""
        cfg, loader = self.cfg, self.train_loader
        model = unwrap_model(self.train_model)
        frozen = frozen_groups(model, cfg, self.epoch)
        apply_freezing(model, frozen)
        set_train_mode(model, frozen)
        loader.sampler.set_epoch(self.epoch, self.step_in_epoch)
        cache = self._feature_cache()
        batches = cache.batches(loader.sampler, self.epoch) if cache else loader
        tf = None if cache else resized(self.train_transform, self.train_size(self.epoch))
        total = len(loader)
        self.progress.start(self.epoch + 1, cfg.epochs, total, self.step_in_epoch)
        tally = EpochTally(self.device, self.partial_sums if self.step_in_epoch else None)
        self.partial_sums = None
        for i, (x, y) in enumerate(batches, start=self.step_in_epoch):
            loss, out, ya = self.train_step(x, y, tf, i)
            self.scheduler.step()
            if self.ema is not None:
                self._update_ema()
            self.global_step += 1
            self.step_in_epoch = i + 1
            tally.add(loss, out, ya)
            if self.step_in_epoch % LOG_EVERY == 0 or self.step_in_epoch == total:
                self._log_progress(tally)
            elif self.progress.due():  # the first step, then by time (rank 0 only)
                self._log_progress(tally, check=False)
            if self.step_in_epoch < total:
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self._check_finite(tally)
                    self.save(self.run.last_checkpoint, self._all_sums(tally))
                self._stop_if_asked(tally)
        self._check_finite(tally)
        self.progress.close()
        # DDP syncs parameters, but each rank's BN running statistics last saw its own batch:
        # take rank 0's so every rank evaluates (and ends with) the same model.
        D.broadcast_buffers(unwrap_model(self.model), self.dist)
        if self.ema is not None:
            D.broadcast_buffers(self.ema, self.dist)
        self.epoch += 1
        self.step_in_epoch = 0
        seconds = self._account(tally)
        return {**tally.means(self.dist), "seconds": seconds}

    def _feature_cache(self) -> FeatureCache | None:
        """The frozen backbone's features, built on first use (see train/features.py)."""
        if self.features is None and can_cache(self.cfg, self.data):
            model = unwrap_model(self.model)
            self.features = build_cache(
                model, self.data, self.cfg.feature_views, self.device, self.precision,
                self.cfg.batch_size, self.run_dir,
            )  # fmt: skip
            self.train_seconds += self.features.seconds
            self.progress.line(
                f"feature cache: {self.features.views} view(s) of "
                f"{len(self.features.labels)} images, {model.num_features} features each, "
                f"in {self.features.seconds:.1f}s"
            )
        return self.features

    def _check_finite(self, tally: EpochTally) -> None:
        tally.check_finite(self.global_step, self.step_losses)

    def _log_progress(self, tally: EpochTally, check: bool = True) -> None:
        """Show the step, loss and images/s. ``check``: the pending losses are checked for
        NaN first (every LOG_EVERY steps, on every rank alike); an update between those, which
        only rank 0 makes, reads the last loss without raising, so the ranks stay in step."""
        if check:
            self._check_finite(tally)
        last = tally.pending[-1].item() if tally.pending else self.step_losses[-1]
        self.progress.update_to(
            self.step_in_epoch, loss=f"{last:.3f}", img_s=f"{tally.images_per_second():.0f}"
        )

    def _account(self, tally: EpochTally) -> float:
        """Add the epoch's time and images (all ranks) to the run's; returns the seconds."""
        seconds = tally.seconds
        self.train_seconds += seconds
        self.train_images += tally.images * self.dist.world_size
        return seconds

    def _all_sums(self, tally: EpochTally) -> torch.Tensor:
        """The epoch's running sums over every rank, for a mid-epoch checkpoint: rank 0 alone
        takes them back on resume (each rank's own share would be counted once per rank)."""
        return D.all_reduce_sum(tally.sums.clone(), self.dist)

    def _stop_if_asked(self, tally: EpochTally | None = None) -> None:
        """End the run here when --max-steps is reached or a stop was asked (Ctrl-C, SIGTERM).
        Mid-epoch (``tally`` given) a resumable checkpoint with the epoch's running sums is
        written first; at the end of an epoch its own checkpoint is already there. Under DDP
        the ranks agree on a signal every LOG_EVERY steps and at each epoch's end, and wait
        for rank 0's checkpoint before they stop, so each stops after the same step."""
        if not self.dist.enabled:
            self._stop_signal = self._signal
        elif tally is None or self.step_in_epoch % LOG_EVERY == 0:
            self._stop_signal = D.max_over_ranks(self._signal or 0, self.dist, self.device) or None
        reason = self._stop_reason()
        if reason is None:
            return
        if tally is not None:
            self._check_finite(tally)
            self._account(tally)
            self.save(self.run.last_checkpoint, self._all_sums(tally))
            self.progress.close()
        D.barrier(self.dist)
        raise RunStopped(reason, self.run_dir, self._stop_signal)

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.ema_decay
        src = unwrap_model(self.model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])

    def eval_model(self) -> nn.Module:
        if self.swa is not None and self.swa.active:
            return self.swa.model
        return self.ema if self.ema is not None else unwrap_model(self.model)

    def train_size(self, epoch: int) -> int:
        """Side of the training images in ``epoch`` (smaller early on with --progressive)."""
        progressive = self.cfg.progressive and self.features is None
        return train_size(self.data.input_size, epoch, self.cfg.epochs, progressive)

    def evaluate(self, split: str, model: nn.Module | None = None, size: int | None = None) -> dict:
        """Loss, top-1, top-5 on a split (sharded across ranks, reduced), at side ``size``
        (default: the full input size)."""
        model = model or self.eval_model()
        if split not in self._eval_loaders:  # built once: file loaders keep their workers
            self._eval_loaders[split] = self.data.split_loader(
                split,
                channels_last=self.cfg.channels_last,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        loader, transform = self._eval_loaders[split]
        transform = resized(transform, size or self.data.input_size)
        return evaluate_loader(
            model, loader, transform, self.device, self.precision, self.dist, self.multilabel
        )

    # ---------------------------------------------------------------------------- fit

    def _stop_reason(self) -> str | None:
        if self._stop_signal is not None:
            how = "interrupted" if self._stop_signal == signal.SIGINT else (
                f"stopped by {signal.Signals(self._stop_signal).name}"
            )  # fmt: skip
            return f"{how} at step {self.global_step} (epoch {self.epoch + 1}); checkpoint saved"
        if self.cfg.max_steps and self.global_step >= self.cfg.max_steps:
            return f"stopped after step {self.global_step} (--max-steps)"
        return None

    @contextlib.contextmanager
    def _signals_save(self) -> Iterator[None]:
        """The first Ctrl-C, or SIGTERM (what Docker, Kubernetes and Slurm send a preempted
        job), ends the run after its current step with a resumable checkpoint; a second one
        stops at once. Signals reach the main thread only: a run in another thread keeps
        Python's handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is not None:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + signum)
            self._signal = signum
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.progress.line(f"{name}: stopping after this step with a checkpoint ({name} "
                               "again to stop at once)")  # fmt: skip

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, handler) for s in signals}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, signal.SIG_DFL if h is None else h)

    @records_outcome  # status.json: finished, stopped or failed (and why)
    def fit(self, on_epoch_end=None) -> dict:
        """Train to ``cfg.epochs``; ``on_epoch_end(row)`` is called after each epoch (it may
        raise to stop, e.g. a pruned hyper-parameter trial). The run folder is let go at the
        end; a write the disk or its permissions refuse is one ``WriteError`` that says how to
        continue."""
        try:
            with self._signals_save():
                return self._fit(on_epoch_end)
        except WriteError as exc:
            raise self._write_failed(exc) from None
        finally:
            self.close()

    def _fit(self, on_epoch_end=None) -> dict:
        cfg = self.cfg
        has_val = "val" in self.data.source.splits and len(self.data.source.splits["val"]) > 0
        stale = 0
        if cfg.time_budget and self.resume_state is None and self.global_step == 0:
            plan_for_budget(self)
        if self.dist.is_main:
            self.progress.line(
                f"training {cfg.model} on {cfg.data}: {self._classes_text()}, "
                + ", ".join(f"{k} {len(v)}" for k, v in self.data.source.splits.items())
                + f"; {self.precision}, {self.device.type}"
                + (", channels_last" if cfg.channels_last else "")
                + f"; input {self._input_text()}; run folder {self.run_dir}"
            )
            if self.weights_note:
                self.progress.line(self.weights_note)
            if self.teacher is not None:
                self.progress.line(self.teacher.note)
            if self.resume_state is None:
                self.progress.line(recipe_line(cfg, len(self.train_loader)))
            note = imbalance_note(self.data.source.class_counts("train"))
            # Its remedies weigh single-label classes; labels of a multi-label set are not rivals.
            remedies_apply = cfg.class_weights == "none" and cfg.sampler == "none"
            if note and remedies_apply and not self.multilabel:
                self.progress.line(f"warning: {note}")
            if not has_val:
                self.progress.line(
                    "warning: no validation images (too few per class to hold any out); the "
                    "best epoch is the one with the lowest training loss, and `evaluate` needs "
                    "--data with images of its own"
                )
        if self.resume_state is not None and self.epoch >= cfg.epochs and self.dist.is_main:
            self.progress.line(
                f"{self.run_dir} has already completed its {cfg.epochs} epochs: nothing to "
                f"train; give --epochs N (more than {cfg.epochs}) to make it longer"
            )
        while self.epoch < cfg.epochs:
            stats = self.train_one_epoch()
            if self.swa is not None:  # the average, its BatchNorm statistics measured
                self.swa.epoch_end(self)
            if cfg.precise_bn and not (self.swa is not None and self.swa.active):
                recompute_bn_stats(self)
            size = eval_size(self.data.input_size, self.train_size(self.epoch - 1))
            val = self.evaluate("val", size=size) if has_val else {}
            row = {
                "epoch": self.epoch,
                "lr": self.optimizer.param_groups[-1]["lr"],
                **stats,
                "val_loss": val.get("loss"),
                "val_top1": val.get("top1"),
                "val_top5": val.get("top5"),
            }
            if self.multilabel:
                row.update(val_map=val.get("map"), val_exact_match=val.get("exact_match"))
            self.history.append(row)
            # Best = highest val top-1 (multi-label: mAP); ties (common on small val sets) go to
            # the lower loss.
            key = "map" if self.multilabel else "top1"
            score = [val[key] or 0.0, -val["loss"]] if has_val else [-stats["train_loss"]]
            improved = self.best["score"] is None or score > list(self.best["score"])
            # SWA: each epoch's average holds one epoch more; the last one, of all, is kept.
            improved = improved or (self.swa is not None and self.swa.active)
            if improved:
                self.best = {"epoch": self.epoch, "val_top1": val.get("top1"), "score": score}
                if self.multilabel:
                    self.best["val_map"] = val.get("map")
                stale = 0
            else:
                stale += 1
            if self.dist.is_main:
                self._epoch_outputs(row, improved)
            if on_epoch_end is not None:
                on_epoch_end(row)
            if self.epoch < cfg.epochs:
                self._stop_if_asked()
            if cfg.patience and stale >= cfg.patience:
                self.progress.line(f"early stop: no val improvement for {cfg.patience} epochs")
                break
        D.barrier(self.dist)
        return self._finish()

    def _input_text(self) -> str:
        size, note = self.data.input_size, self.data.size_note
        return f"{size}x{size}, {self.data.preset} preset" + (f" ({note})" if note else "")

    def _classes_text(self) -> str:
        if self.multilabel:
            return f"{_count(len(self.classes), 'label')} (multi-label)"
        return _count(len(self.classes), "class")

    def _epoch_outputs(self, row: dict, improved: bool) -> None:
        self.metrics_csv.write(self.history)
        if self.tb is not None:
            self.tb.log(row)
        self.save(self.run.last_checkpoint)
        if improved:
            self.save(self.run.best_checkpoint)
            save_bundle(self.eval_model(), self.model_meta(), self.run_dir)
        if self.multilabel:  # top-1 means nothing here: exact match, and val mAP
            measure = "exact"
            val = (
                f"  val loss {row['val_loss']:.4f} exact {pct(row['val_exact_match'])} "
                f"mAP {pct(row['val_map'])}"
                if row.get("val_map") is not None
                else ""
            )
        else:
            measure = "top-1"
            val = (
                f"  val loss {row['val_loss']:.4f} top-1 {pct(row['val_top1'])}"
                if row["val_top1"] is not None
                else ""
            )
        self.progress.line(
            f"epoch {row['epoch']:>3}/{self.cfg.epochs}  lr {row['lr']:.4g}  train loss "
            f"{row['train_loss']:.4f} {measure} {pct(row['train_top1'])}{val}  "
            f"{row['seconds']:.1f}s" + ("  *" if improved else "")
        )

    def _finish(self) -> dict:
        test = None
        has_test = "test" in self.data.source.splits and len(self.data.source.splits["test"])
        if has_test and not self.multilabel:
            best = self.run.best_checkpoint
            model = copy.deepcopy(self.eval_model())
            if self.dist.is_main and best.is_file():
                state = load_checkpoint(best)
                model.load_state_dict(state.get("ema") or state["model"])  # EMA, SWA
            if self.dist.enabled:
                for t in model.state_dict().values():
                    torch.distributed.broadcast(t, src=0)
            test = self.evaluate("test", model)
        calibration = None
        if self.dist.is_main and self.multilabel:  # thresholds, then the test at them
            best = best_weights(self.eval_model(), self.run.best_checkpoint, self.ema is not None)
            args = (best, self.data, self.device, self.precision)
            calibration = fit_thresholds(*args, self.run, self.model_meta()) or {}
            if calibration:
                self.thresholds = list(calibration["thresholds"].values())
            if has_test:
                calibration.update(multilabel_test(*args, self.thresholds))
            calibration["best_val_map"] = self.best.get("val_map")
        elif self.dist.is_main:  # temperature scaling on the best weights (Guo et al. 2017)
            best = best_weights(self.eval_model(), self.run.best_checkpoint, self.ema is not None)
            calibration = calibrate_run(
                best, self.data, self.device, self.precision, self.run, self.model_meta()
            )
        summary = {
            "model": self.cfg.model,
            "data": self.cfg.data,
            "classes": list(self.classes),
            "epochs_completed": self.epoch,
            "best_epoch": self.best["epoch"],
            "best_val_top1": self.best["val_top1"],
            "test_top1": test["top1"] if test else None,
            "test_top5": test["top5"] if test else None,
            "train_seconds": round(self.train_seconds, 3),
            "train_images_per_second": round(self.train_images / max(self.train_seconds, 1e-9), 2),
            "precision": self.precision,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "run_dir": str(self.run_dir),
            "weights_sha256": weights_fingerprint(unwrap_model(self.model)),
            **(calibration or {}),
        }
        if self.dist.is_main:
            atomic_write_text(self.run.summary, json.dumps(summary, indent=2, ensure_ascii=False))
            if self.tb is not None:
                self.tb.close()
        return summary
