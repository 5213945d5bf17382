"""What a checkpoint holds of a ``Trainer`` and how it comes back: one place writes the
state and one restores it, so the two stay in step. How far the run is (epoch, step, history,
best epoch, time) is one dataclass, ``RunProgress``, that both writes and reads its part."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .. import __version__
from ..artifacts.run import ModelMeta
from ..artifacts.weights import (
    unwrap_model,
)
from ..core.errors import ConfigError
from ..data.sources import class_name
from ..tasks import task_of
from .checkpoint import (
    capture_rng,
    restore_rng,
    save_checkpoint,
)


def _no_best() -> dict:
    return {"epoch": None, "val_top1": None, "score": None}


@dataclass
class RunProgress:
    """How far a run is. ``to_checkpoint`` is its part of a checkpoint (flat keys, as every
    checkpoint has had them) and ``from_checkpoint`` reads it back, so save and resume cannot
    drift apart."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # batches of the current epoch done (a mid-epoch checkpoint)
    global_step: int = 0
    history: list[dict] = field(default_factory=list)  # one row per epoch (metrics.csv)
    best: dict = field(default_factory=_no_best)  # the best epoch and its score
    train_seconds: float = 0.0  # training time, precise BN and averaging included
    train_images: int = 0  # images trained on, all ranks

    def to_checkpoint(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(history=list(self.history), best=dict(self.best))
        return out

    @classmethod
    def from_checkpoint(cls, s: dict) -> RunProgress:
        return cls(
            epoch=int(s["epoch"]),
            step_in_epoch=int(s.get("step_in_epoch", 0)),
            global_step=int(s.get("global_step", 0)),
            history=list(s.get("history", [])),
            best=dict(s.get("best") or _no_best()),
            train_seconds=float(s.get("train_seconds", 0.0)),
            train_images=int(s.get("train_images", 0)),
        )


class TrainState:
    """Saving and restoring a ``Trainer``'s state, and the ``model.json`` it writes. The
    run's progress lives in ``self.state`` (a ``RunProgress``); ``self.epoch`` and the other
    fields of it read and write through to it."""

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
        self.state = RunProgress.from_checkpoint(s)
        self.partial_sums = s.get("partial_sums") if self.dist.is_main else None
        restore_rng(s["rng"])

    def model_meta(self) -> ModelMeta:
        c, size = self.data.channels, self.data.input_size
        return ModelMeta(
            model=self.cfg.model,
            num_classes=len(self.classes),
            in_chans=c,
            classes=list(self.classes),
            input_size=[c, size, size],
            mean=list(self.data.mean),
            std=list(self.data.std),
            preset=self.data.preset,
            model_kwargs=dict(self.cfg.model_kwargs),
            weights=self.cfg.weights,
            resnetlab_version=__version__,
            **self.eval_preprocess,
            task=task_of(self.multilabel).stored,
            thresholds=self.thresholds,
        )

    def _checkpoint_state(self, sums: torch.Tensor | None = None) -> dict:
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **self.state.to_checkpoint(),
            "partial_sums": sums.detach().cpu() if sums is not None else None,
            "rng": capture_rng(),
            "classes": list(self.classes),
            "config": self.cfg.to_dict(),
            "model_meta": self.model_meta().to_json(),
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


def _through(name: str) -> property:
    return property(
        lambda self: getattr(self.state, name),
        lambda self, value: setattr(self.state, name, value),
        doc=f"``self.state.{name}``",
    )


for _field in fields(RunProgress):
    setattr(TrainState, _field.name, _through(_field.name))
