"""What a model is asked to do with an image: the one place single-label and multi-label
classification differ.

A :class:`Task` answers what the rest of the package would otherwise branch on: its name in
``model.json``, ``summary.json`` and the exports' metadata, the measure the best epoch is
chosen by, the per-class measure, how logits become probabilities and labels, what a listing
row holds and how a run's calibration is kept. ``task_of`` gives the one instance for
whatever spells a task (``None``, ``"multiclass"``, ``"multilabel"``, a bool, or an object
with a ``task`` or ``multilabel`` attribute: a model's metadata, a data source, a config).
"""

from __future__ import annotations

from typing import Any

import torch

from ..metrics import multilabel as ml
from ..metrics.calibration import apply_temperature

NAMES = ml.TASKS
# the classes an answer lists when no number is asked for
DEFAULT_TOPK = 5


class Task:
    """Single-label classification: one class per image, softmax of logits over a
    temperature, the best epoch by validation top-1."""

    name = "multiclass"
    multilabel = False
    # what model.json and the checkpoints keep (None: the single-label default, as before)
    stored: str | None = None
    # the measure the best epoch is chosen by (history ``val_<score>``, summary
    # ``best_val_<score>`` and ``test_<score>``) and how it is printed
    score = "top1"
    score_title = "top-1"
    # the per-class measure tables and comparisons show
    per_class_metric = "f1"
    # a listing's column of labels, and what the outputs are called in lines
    label_column = "label"
    outputs = "classes"
    # calibration: a temperature (single-label) or per-class thresholds (multi-label)
    calibration = "temperature"

    def key(self, split: str) -> str:
        """The history or summary key of this task's score on ``split`` (``val_top1``)."""
        return f"{split}_{self.score}"

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Probabilities of ``logits``: softmax over the classes at the run's temperature."""
        return apply_temperature(logits, temperature)

    def rows(
        self, probs: torch.Tensor, classes: list[str], meta: Any, k: int | None
    ) -> list[list[dict]]:
        """Each image's answer: its ``k`` (default 5) most probable classes, most probable
        first; a ``k`` above the number of classes gives all of them."""
        k = min(k or DEFAULT_TOPK, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [
            [
                {"label": classes[i], "index": int(i), "prob": float(p)}
                for p, i in zip(v.tolist(), ix.tolist())
            ]
            for v, ix in zip(values, indices)
        ]

    def calibration_of(self, meta: Any) -> dict[str, Any]:
        """What the model's calibration is, as ``/model`` and the notebook API show it."""
        return {"temperature": meta.temperature, "thresholds": None}

    def thresholds(self, meta: Any) -> list[float] | None:
        """Per-class decision thresholds (multi-label only; None here)."""
        return None

    def metadata(self, meta: Any) -> dict[str, Any]:
        """What an export records of the task beside the temperature (``resnetlab.task`` and
        for multi-label its thresholds), as JSON-able values."""
        return {"task": self.name}

    def from_metadata(self, read: Any) -> dict[str, Any]:
        """The ``model.json`` fields an export's metadata gives back; ``read(key)`` returns a
        recorded value (JSON text) or None."""
        return {}

    def apply_calibration(self, meta: Any, found: dict) -> None:
        """Take the run's calibration (``calibration.json``) into ``meta``."""
        if found.get("temperature"):
            meta.temperature = float(found["temperature"])

    def answer(self, rows: list[dict]) -> dict[str, Any]:
        """A served answer for one image's rows (``topk``; multi-label adds ``labels``)."""
        return {"topk": rows}

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class MultiLabel(Task):
    """Multi-label classification: any number of labels per image, one sigmoid per class,
    each with its threshold chosen on the validation split, the best epoch by validation
    mAP."""

    name = "multilabel"
    multilabel = True
    stored = "multilabel"
    score = "map"
    score_title = "mAP"
    per_class_metric = "ap"
    label_column = "labels"
    outputs = "labels, multi-label"
    calibration = "thresholds"

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Independent per-class probabilities: the sigmoid of each logit (no temperature)."""
        return ml.probabilities(logits)

    def rows(self, probs, classes, meta, k):
        """Every label at or above its threshold, most probable first (at most ``k`` when
        given; each with its ``threshold``)."""
        return ml.label_rows(probs, classes, self.thresholds(meta), k)

    def calibration_of(self, meta: Any) -> dict[str, Any]:
        return {"temperature": None, "thresholds": meta.thresholds}

    def thresholds(self, meta: Any) -> list[float] | None:
        return list(meta.thresholds or [ml.DEFAULT_THRESHOLD] * meta.num_classes)

    def metadata(self, meta: Any) -> dict[str, Any]:
        return {"task": self.name, "thresholds": self.thresholds(meta)}

    def from_metadata(self, read: Any) -> dict[str, Any]:
        import json

        return {"task": self.stored, "thresholds": json.loads(read("thresholds") or "null")}

    def apply_calibration(self, meta: Any, found: dict) -> None:
        if found.get("thresholds"):
            meta.thresholds = [float(t) for t in found["thresholds"]]

    def answer(self, rows: list[dict]) -> dict[str, Any]:
        return {"topk": rows, "labels": [r["label"] for r in rows]}


SINGLE_LABEL = Task()
MULTI_LABEL = MultiLabel()


def task_of(what: Any = None) -> Task:
    """The task ``what`` spells: ``None``/``"multiclass"``/``False`` single-label,
    ``"multilabel"``/``True`` multi-label, or the task of an object's ``task`` or
    ``multilabel`` attribute."""
    if isinstance(what, Task):
        return what
    if what is None or isinstance(what, (str, bool)):
        return MULTI_LABEL if what in ("multilabel", True) else SINGLE_LABEL
    if isinstance(what, dict):
        return task_of(what.get("task"))
    task = getattr(what, "task", None)
    if isinstance(task, (str, Task)):
        return task_of(task)
    return task_of(bool(getattr(what, "multilabel", False)))
