"""Knowledge distillation (``train --teacher SOURCE``): a student trained on a teacher's soft
targets as well as on the labels.

Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network",
arXiv:1503.02531): the loss is ``(1 - w) * CE(student, labels) + w * T² * KL(softmax(teacher /
T) || softmax(student / T))``, T the temperature (``--kd-temperature``), w the weight of the
soft term (``--kd-weight``); the T² keeps the soft term's gradients on the scale of the hard
one's as T changes. The defaults (T 4, w 0.9) are those of the CIFAR distillation benchmark of
Tian et al. 2020 (RepDistiller), whose ResNet-56 -> ResNet-20 pair ``benchmarks/methods.py``
measures here.

The teacher runs once per batch, in evaluation mode and under ``torch.inference_mode``, on the
very images the student gets (augmented, and mixed when --mixup/--cutmix mix them), after they
are converted to what the teacher was trained on: its normalisation, channels and input size.
It consumes no random numbers, so a distilled run resumes bit-exactly like any other; its
weights' SHA-256 is kept in the checkpoints and a resumed run refuses a teacher that changed.

Its classes must be the data's: the same names (in any order: its outputs are reordered to the
student's), or, for weights that name no classes (a plain file), as many outputs.
"""

from __future__ import annotations

import os

import torch
from torch.nn import functional as F

from ..core.device import autocast
from ..core.errors import ConfigError, WeightsError
from ..data.sources import class_name
from ..inference.loading import LoadedModel, load_model, model_on, pretrained_model
from ..metrics.fingerprint import weights_fingerprint
from ..tasks import task_of
from .features import can_cache

# ITU-R 601 luma, as PIL's convert("L"): an RGB batch for a greyscale teacher.
LUMA = (0.299, 0.587, 0.114)


def soft_target_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T² · KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


class Teacher:
    """A trained model giving soft targets for the student's batches."""

    def __init__(
        self,
        loaded: LoadedModel,
        source: str,
        order: list[int] | None,
        data,
        device,
        precision: str,
        channels_last: bool,
        temperature: float,
        weight: float,
    ) -> None:
        self.loaded, self.source, self.meta = loaded, source, loaded.meta
        self.device, self.precision = device, precision
        self.temperature, self.weight = temperature, weight
        self.model = model_on(loaded.model, device, channels_last).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.sha256 = weights_fingerprint(self.model)
        self.order = None if order is None else torch.tensor(order, device=device)
        # Student inputs are (x / 255 - mean_s) / std_s; the teacher's, with its own.
        self.student_norm = (list(data.mean), list(data.std))
        self.student_channels = data.channels
        self.size = self.meta.size
        self.convert = (
            list(self.meta.mean) != list(data.mean)
            or list(self.meta.std) != list(data.std)
            or self.meta.in_chans != data.channels
        )
        notes = []
        if self.meta.in_chans != data.channels:
            notes.append(f"{data.channels}-channel images given as {self.meta.in_chans}")
        if self.convert:
            notes.append("normalised as it was trained")
        if self.size != data.input_size:
            notes.append(f"resized to its {self.size}x{self.size}")
        self.note = (
            f"teacher {source}: {self.meta.model}, {len(self.meta.classes)} classes"
            + (", its outputs reordered to the data's classes" if order is not None else "")
            + (f"; inputs {', '.join(notes)}" if notes else "")
            + f"; soft targets at T {temperature:g}, weight {weight:g} (the labels {1 - weight:g})"
        )

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        if self.convert:
            mean_s, std_s = (
                torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in self.student_norm
            )
            raw = x.float() * std_s + mean_s  # 0..1
            want = self.meta.in_chans
            if raw.shape[1] == 1 and want > 1:
                raw = raw.expand(-1, want, -1, -1)
            elif raw.shape[1] == 3 and want == 1:
                raw = (raw * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, True)
            mean_t, std_t = (
                torch.tensor(v, device=x.device).view(1, -1, 1, 1)
                for v in (self.meta.mean, self.meta.std)
            )
            x = (raw - mean_t) / std_t
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x.float(),
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits of the student's (normalised) batch ``x``, in the data's class
        order; a plain tensor, outside inference mode, for the loss."""
        with torch.inference_mode():
            with autocast(self.precision, self.device):
                out = self.model(self._adapt(x))
            out = out.float()
            if self.order is not None:
                out = out.index_select(1, self.order)
        return out.clone()

    def loss(
        self, hard: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor
    ) -> torch.Tensor:
        """The labels' loss ``hard`` combined with the soft-target loss of the student's
        logits against the teacher's."""
        soft = soft_target_loss(student, teacher, self.temperature)
        return (1 - self.weight) * hard + self.weight * soft

    def check_resume(self, state: dict) -> None:
        saved = state.get("teacher_sha256")
        if saved and saved != self.sha256:
            raise ConfigError(
                f"--teacher {self.source}: its weights are not those the run was distilled from "
                f"(sha256 {self.sha256[:12]}..., the checkpoint's {saved[:12]}...); a resumed run "
                "needs the same teacher"
            )


def _load(spec: str, model_name: str | None) -> LoadedModel:
    if model_name:
        return pretrained_model(model_name, spec)
    try:
        return load_model(os.path.expanduser(spec))
    except WeightsError as exc:
        raise WeightsError(
            f"--teacher {spec}: {exc}; for torchvision, hf-hub or plain weights give the "
            "architecture with --teacher-model NAME"
        ) from None


def class_order(teacher: list[str], data: list[str], named: bool, source: str) -> list[int] | None:
    """Indices that put the teacher's outputs in the data's class order (None: already in it);
    a teacher of other classes is one ``ConfigError`` line."""
    t = [class_name(c) for c in teacher]
    if t == list(data):
        return None
    if not named and len(t) == len(data):
        return None  # a plain file names no classes: its outputs are taken in the data's order
    if sorted(t) == sorted(data) and len(set(t)) == len(t):
        index = {c: i for i, c in enumerate(t)}
        return [index[c] for c in data]
    missing = [c for c in data if c not in t]
    extra = [c for c in t if c not in data]
    detail = []
    if missing:
        detail.append(
            f"it lacks {', '.join(map(repr, missing[:5]))}" + ("..." * (len(missing) > 5))
        )
    if extra:
        detail.append(f"it has {', '.join(map(repr, extra[:5]))}" + ("..." * (len(extra) > 5)))
    raise ConfigError(
        f"--teacher {source} predicts "
        + (
            f"{len(t)} classes, the data has {len(data)}"
            if len(t) != len(data)
            else "other classes than the data's"
        )
        + (f" ({'; '.join(detail)})" if detail else "")
        + ": a teacher must be trained on the student's classes"
    )


def load_teacher(trainer) -> Teacher:
    """The teacher ``trainer.cfg.teacher`` names, checked against the run's data (and, on
    resume, against the teacher the run began with)."""
    cfg, data = trainer.cfg, trainer.data
    trainer.task.require("teacher")
    if can_cache(cfg, data):
        raise ConfigError(
            "--teacher runs on the images, and feature extraction with its cache trains the head "
            "on stored features: add --no-feature-cache (or train with --mode finetune)"
        )
    loaded = _load(cfg.teacher, cfg.teacher_model)
    task_of(loaded.meta).require("teacher_model", ConfigError, f"--teacher {cfg.teacher} ")
    unnamed = [str(i) for i in range(loaded.meta.num_classes)]
    named = cfg.teacher_model is None or list(loaded.meta.classes) != unnamed
    order = class_order(loaded.meta.classes, list(data.classes), named, cfg.teacher)
    teacher = Teacher(
        loaded,
        cfg.teacher,
        order,
        data,
        trainer.device,
        trainer.precision,
        cfg.channels_last,
        cfg.kd_temperature,
        cfg.kd_weight,
    )
    if trainer.resume_state is not None:
        teacher.check_resume(trainer.resume_state)
    return teacher
