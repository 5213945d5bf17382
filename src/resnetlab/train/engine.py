"""The training loop: short named functions around one ``Trainer`` that owns the run state."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..artifacts.weights import (
    unwrap_model,
)
from ..core.device import autocast
from ..core.errors import WriteError
from ..core.files import FolderLock, atomic_write_text
from ..data.loader import mix_seed
from ..metrics.fingerprint import weights_fingerprint
from . import distributed as D
from .accumulate import accumulate_gradients
from .calibration import best_weights, calibrate_run, fit_thresholds, multilabel_test
from .checkpoint import (
    load_checkpoint,
)
from .config import TrainConfig
from .features import FeatureCache, build_cache, can_cache, sync_head_grads
from .folder import RunFolderClaim
from .hooks import Hook, default_hooks
from .metrics import evaluate_loader
from .mixing import mix_batch
from .optim import (
    apply_freezing,
    frozen_groups,
    set_train_mode,
)
from .pacing import eval_size, resized, train_size
from .printing import RunPrinting
from .setup import TrainerSetup
from .state import TrainState
from .stopping import LOG_EVERY, RunStopped, Stopping
from .tally import EpochTally, NonFiniteLoss
from .trackers import records_outcome

__all__ = ["LOG_EVERY", "NonFiniteLoss", "RunStopped", "Trainer", "evaluate_loader"]


class Trainer(TrainerSetup, RunFolderClaim, TrainState, Stopping, RunPrinting):
    """Builds everything from a ``TrainConfig`` (or a checkpoint to resume) and runs ``fit``."""

    def __init__(
        self,
        cfg: TrainConfig | None = None,
        resume: str | Path | None = None,
        verbose: bool = True,
        device: torch.device | None = None,
        overrides: dict | None = None,
        hooks: list[Hook] | None = None,
    ) -> None:
        """``resume``: a run folder or checkpoint to continue with its saved settings; only
        the settings in ``overrides`` (the flags given; by default those of ``cfg`` that differ
        from the defaults) may change, and only those a resumed run can change. ``hooks``:
        ``train.hooks.Hook`` objects of the caller's, told of each event after the run's own.

        The run folder is locked from here until ``fit`` ends (or ``close``): a second
        training of the same folder, new or resumed, is refused while this one holds it."""
        self._lock: FolderLock | None = None
        self._signal: int | None = None  # SIGINT or SIGTERM received by this process
        self._stop_signal: int | None = None  # the one every rank agreed to stop on
        self._saved: int | None = None  # the epoch of the last checkpoint this run wrote
        self.extra_hooks = list(hooks or [])
        try:
            self._build(cfg, resume, verbose, device, overrides)
        except WriteError as exc:
            self.close()
            raise self._write_failed(exc) from None
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------- setup

    # ------------------------------------------------------------------------ metadata

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
        cache = self.feature_cache()
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

    def feature_cache(self) -> FeatureCache | None:
        """The frozen backbone's features, built on first use (see train/features.py)."""
        if self.features is None and can_cache(self.cfg, self.data):
            model = unwrap_model(self.model)
            self.features = build_cache(
                model,
                self.data,
                self.cfg.feature_views,
                self.device,
                self.precision,
                self.cfg.batch_size,
                self.run_dir,
            )
            self.train_seconds += self.features.seconds
            self.progress.line(
                f"feature cache: {self.features.views} view(s) of "
                f"{len(self.features.labels)} images, {model.num_features} features each, "
                f"in {self.features.seconds:.1f}s"
            )
        return self.features

    def _check_finite(self, tally: EpochTally) -> None:
        tally.check_finite(self.global_step, self.step_losses)

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
            model, loader, transform, self.device, self.precision, self.dist, self.task
        )

    # ---------------------------------------------------------------------------- fit

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
        hooks = default_hooks(cfg, on_epoch_end) + self.extra_hooks
        for hook in hooks:
            hook.fit_start(self)
        if self.dist.is_main:
            self._print_header(has_val)
        while self.epoch < cfg.epochs:
            stats = self.train_one_epoch()
            for hook in hooks:  # weight averaging, precise BatchNorm
                hook.epoch_trained(self, stats)
            size = eval_size(self.data.input_size, self.train_size(self.epoch - 1))
            val = self.evaluate("val", size=size) if has_val else {}
            row = {
                "epoch": self.epoch,
                "lr": self.optimizer.param_groups[-1]["lr"],
                **stats,
                "val_loss": val.get("loss"),
                "val_top1": val.get("top1"),
                "val_top5": val.get("top5"),
                **self.task.history_fields(val),
            }
            self.history.append(row)
            # Best = highest val top-1 (multi-label: mAP); ties (common on small val sets) go to
            # the lower loss.
            score = (
                [val[self.task.score] or 0.0, -val["loss"]] if has_val else [-stats["train_loss"]]
            )
            improved = self.best["score"] is None or score > list(self.best["score"])
            # SWA: each epoch's average holds one epoch more; the last one, of all, is kept.
            improved = improved or (self.swa is not None and self.swa.active)
            if improved:
                self.best = {
                    "epoch": self.epoch,
                    "val_top1": val.get("top1"),
                    "score": score,
                    **self.task.best_fields(val),
                }
            # the records, the caller's callback, early stopping
            ends = [r for hook in hooks if (r := hook.epoch_end(self, row, improved))]
            if self.epoch < cfg.epochs:
                self._stop_if_asked()
            if ends:
                self.progress.line(ends[0])
                break
        D.barrier(self.dist)
        return self._finish()

    def _finish(self) -> dict:
        has_test = bool("test" in self.data.source.splits and len(self.data.source.splits["test"]))
        # what each task measures once training is over: _close_multiclass, _close_multilabel
        test, calibration = getattr(self, f"_close_{self.task.name}")(has_test)
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

    def _close_multiclass(self, has_test: bool) -> tuple[dict | None, dict | None]:
        """Single-label: the test split on the best weights (every rank), then temperature
        scaling on them (Guo et al. 2017)."""
        test = None
        if has_test:
            best = self.run.best_checkpoint
            model = copy.deepcopy(self.eval_model())
            if self.dist.is_main and best.is_file():
                state = load_checkpoint(best)
                model.load_state_dict(state.get("ema") or state["model"])  # EMA, SWA
            if self.dist.enabled:
                for t in model.state_dict().values():
                    torch.distributed.broadcast(t, src=0)
            test = self.evaluate("test", model)
        if not self.dist.is_main:
            return test, None
        best = best_weights(self.eval_model(), self.run.best_checkpoint, self.ema is not None)
        calibration = calibrate_run(
            best, self.data, self.device, self.precision, self.run, self.model_meta()
        )
        return test, calibration

    def _close_multilabel(self, has_test: bool) -> tuple[dict | None, dict | None]:
        """Multi-label: per-class thresholds on validation, then the test split at them."""
        if not self.dist.is_main:
            return None, None
        best = best_weights(self.eval_model(), self.run.best_checkpoint, self.ema is not None)
        args = (best, self.data, self.device, self.precision)
        calibration = fit_thresholds(*args, self.run, self.model_meta()) or {}
        if calibration:
            self.thresholds = list(calibration["thresholds"].values())
        if has_test:
            calibration.update(multilabel_test(*args, self.thresholds))
        calibration["best_val_map"] = self.best.get("val_map")
        return None, calibration
