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
from torch import nn

from ..core.errors import ConfigError
from ..core.fmt import pct
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
    kinds = "classes"
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

    def decide(self, probs: Any, classes: list[str], thresholds: list[float] | None) -> Any:
        """One image's answer from its probabilities (a sequence): the most probable class."""
        return classes[max(range(len(probs)), key=lambda i: probs[i])]

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

    # ---------------------------------------------------------------- training

    # the imbalance warning names remedies that weigh rival classes (--class-weights,
    # --sampler balanced): it applies where an image has one class
    warns_imbalance = True
    # what this task cannot do: a feature's name -> why (``require`` raises with it)
    refuses: dict[str, str] = {}

    def require(self, feature: str, error: type[Exception] = ConfigError, where: str = "") -> None:
        """Raise ``error`` (one line, prefixed ``where``) when this task cannot do ``feature``
        (``class_weights``, ``sampler``, ``teacher``, ``relabel``, ``label_audit``...)."""
        why = self.refuses.get(feature)
        if why is not None:
            raise error(f"{where}{why}")

    def criterion(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None):
        """The training loss: cross-entropy over the classes (class ``weight``s allowed)."""
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def history_fields(self, val: dict) -> dict[str, Any]:
        """What a history row (``metrics.csv``) holds of this task beyond loss/top-1/top-5."""
        return {}

    def best_fields(self, val: dict) -> dict[str, Any]:
        """What the best epoch keeps of its validation beyond top-1."""
        return {}

    def classes_text(self, n: int) -> str:
        """The classes, as the first line of a training says them ("10 classes")."""
        return f"{n} class" + ("" if n == 1 else "es")

    def epoch_text(self, row: dict) -> tuple[str, str]:
        """An epoch line's training measure name and its validation part."""
        val = (
            f"  val loss {row['val_loss']:.4f} top-1 {pct(row['val_top1'])}"
            if row.get("val_top1") is not None
            else ""
        )
        return "top-1", val

    def history_curves(self) -> list[tuple[str, str]]:
        """The validation curves a training plot draws beside train (history key, legend)."""
        return [("val_top1", "val")]

    # the title of the plot's accuracy panel
    history_panel = "top-1 accuracy (%)"

    def curves_options(self) -> dict:
        """What ``core.plots.curves_figure`` needs to draw this task's history."""
        return {"curves": self.history_curves(), "panel": self.history_panel}

    # ---------------------------------------------------------------- data

    # an image may carry none of the labels (multi-label: an empty cell is an answer)
    may_be_unlabelled = False
    # a listing's row, and the hints its errors give
    csv_shape = "path,label[,split]"
    csv_hint = " (for images with several labels, separated by |, or none: --task multilabel)"
    split_hint = ""
    jsonl_shape = '{"path": ..., "label": ...}'
    jsonl_hint = " (for images with several labels: --task multilabel)"
    # what a data set's label column holding this task's labels says when another is asked
    column_holds = "holds one label per image; --task multilabel needs a sequence of ClassLabel"

    def check_data(self, data: str) -> None:
        """Refuse a DATA string whose kind cannot hold this task's labels (any can here)."""
        return None

    def label_texts(self, text: str) -> list[str]:
        """The label names in a listing's label cell."""
        return [text.strip()]

    def cell_text(self, value: Any, where: str) -> Any:
        """A JSON line's label value as a listing cell's text (``where`` prefixes errors)."""
        return value

    def check_cells(self, name: str, records: list) -> None:
        """Refuse listing records whose label cells this task cannot read."""
        from ..core.errors import DataError

        several = next((r for r in records if ml.LABEL_SEPARATOR in r[1]), None)
        if several is not None:
            raise DataError(
                f"{name}: {several[3]} gives several labels ({several[1].strip()!r}); for "
                "images with several labels train with --task multilabel"
            )

    def target(self, indices: list[int]) -> Any:
        """An image's stored label from the indices of its label names."""
        return indices[0]

    def targets(self, labels: list, num_classes: int) -> torch.Tensor:
        """A split's labels as a tensor: class indices."""
        return torch.tensor(labels, dtype=torch.long)

    def label_text(self, y: torch.Tensor, classes: list[str]) -> str:
        """A stored label as a listing cell: a class name."""
        return classes[int(y)]

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
    kinds = "labels"
    calibration = "thresholds"

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Independent per-class probabilities: the sigmoid of each logit (no temperature)."""
        return ml.probabilities(logits)

    def rows(self, probs, classes, meta, k):
        """Every label at or above its threshold, most probable first (at most ``k`` when
        given; each with its ``threshold``)."""
        return ml.label_rows(probs, classes, self.thresholds(meta), k)

    def decide(self, probs: Any, classes: list[str], thresholds: list[float] | None) -> Any:
        """The labels at or above their thresholds."""
        return [c for c, p, t in zip(classes, probs, thresholds) if p >= t]

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

    warns_imbalance = False
    refuses = {
        "class_weights": "--class-weights weighs the classes of single-label data; a "
        "multi-label image carries several at once (leave --class-weights at none)",
        "sampler": "--sampler balanced draws classes of single-label data; multi-label images "
        "carry several classes at once (leave --sampler at none)",
        "teacher": "--teacher distils single-label classes (softmax soft targets); this data "
        "is multi-label",
        "teacher_model": "is a multi-label model; distillation here takes a single-label teacher",
        "relabel": "relabelling takes one label per image; this data is multi-label",
        "label_audit": "--labels finds wrong labels of single-label data; multi-label data is "
        "not supported (its duplicates are)",
    }

    def criterion(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None):
        """Binary cross-entropy on each class's logit, smoothed as timm's."""
        return MultiLabelLoss(label_smoothing)

    def history_fields(self, val: dict) -> dict[str, Any]:
        return {"val_map": val.get("map"), "val_exact_match": val.get("exact_match")}

    def best_fields(self, val: dict) -> dict[str, Any]:
        return {"val_map": val.get("map")}

    def classes_text(self, n: int) -> str:
        return f"{n} label" + ("" if n == 1 else "s") + " (multi-label)"

    def epoch_text(self, row: dict) -> tuple[str, str]:
        # top-1 means nothing here: exact match, and val mAP
        val = (
            f"  val loss {row['val_loss']:.4f} exact {pct(row['val_exact_match'])} "
            f"mAP {pct(row['val_map'])}"
            if row.get("val_map") is not None
            else ""
        )
        return "exact", val

    def history_curves(self) -> list[tuple[str, str]]:
        # train: exact match; val: exact match and mAP (the measure the best epoch is chosen by)
        return [("val_exact_match", "val"), ("val_map", "val mAP")]

    history_panel = "exact match (%), and val mAP"

    may_be_unlabelled = True
    csv_shape = "path,labels[,split] (labels separated by |)"
    csv_hint = " (labels are separated by |, not commas)"
    split_hint = csv_hint
    jsonl_shape = '{"path": ..., "labels": [...]}'
    jsonl_hint = ""
    column_holds = "holds several labels per image; train it with --task multilabel"

    def check_data(self, data: str) -> None:
        from ..core.errors import DataError

        if data.partition(":")[0] not in ("csv", "jsonl", "hf", "hf-disk"):
            raise DataError(
                f"--task multilabel reads its labels from csv:FILE (path,labels with | between "
                f"labels) or jsonl:FILE; {data!r} has one label per image"
            )

    def label_texts(self, text: str) -> list[str]:
        return sorted({t.strip() for t in text.split(ml.LABEL_SEPARATOR) if t.strip()})

    def cell_text(self, value: Any, where: str) -> Any:
        from ..core.errors import DataError

        if not isinstance(value, list):
            return value
        odd = next((x for x in value if not isinstance(x, str)), None)
        if odd is not None:
            raise DataError(
                f"{where}: label {odd!r} is not a string; write labels as names, e.g. "
                '"labels": ["cat", "outdoor"]'
            )
        return ml.LABEL_SEPARATOR.join(value)

    def check_cells(self, name: str, records: list) -> None:
        return None

    def target(self, indices: list[int]) -> Any:
        return indices

    def targets(self, labels: list, num_classes: int) -> torch.Tensor:
        """Multi-hot rows."""
        out = torch.zeros(len(labels), num_classes)
        for row, indices in enumerate(labels):
            out[row, indices] = 1.0
        return out

    def label_text(self, y: torch.Tensor, classes: list[str]) -> str:
        return ml.LABEL_SEPARATOR.join(classes[j] for j in (y > 0.5).nonzero().flatten())


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy on each class's logit (multi-hot targets), smoothed as timm's."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ml.multilabel_loss(logits, ml.smoothed_targets(targets.float(), self.smoothing))


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
