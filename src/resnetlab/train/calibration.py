"""Temperature scaling at the end of training: fit T on the validation split, record it
(multi-label runs: per-class decision thresholds instead, :func:`fit_thresholds`).

The engine calls :func:`calibrate_run` once, with the best weights, after the last epoch. It
writes ``RUN/calibration.json`` (the fitted T, the ECE before and after, and the reliability
bins the report draws) and the temperature into ``model.json``, where ``predict``, ``serve``,
``evaluate`` and ``export`` find it. The fit itself is ``calibrate.calibration_summary``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.run import ModelMeta, RunDir
from ..core.files import atomic_write_text
from ..data import DataPipeline
from ..metrics.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, calibration_summary
from ..metrics.logits import all_logits
from ..metrics.multilabel import choose_thresholds, multilabel_metrics, probabilities
from .checkpoint import load_checkpoint

# The keys calibrate_run adds to summary.json (the architecture's "calibrated runs").
SUMMARY_KEYS = ("temperature", "ece_before", "ece_after")
# Fewer validation images than this fit no temperature: one scalar fitted on a handful of
# images follows their noise (6 images gave T = 100, every probability about 1/classes).
# Its ECE, over 15 bins, needs a few images per bin to mean anything.
MIN_CALIBRATION_IMAGES = 50


def best_weights(model: nn.Module, checkpoint: Path, ema: bool = False) -> nn.Module:
    """A copy of ``model`` holding the weights of ``checkpoint`` (the best epoch's; its EMA
    weights when ``ema``), or a plain copy when there is no such file. The copy leaves the
    training model as it is (the last epoch's weights, which a resume continues from)."""
    best = copy.deepcopy(model)
    if Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        # The evaluation weights: EMA's, SWA's average (once it began), else the model's.
        best.load_state_dict(state.get("ema") or state["model"])
    return best


def validation_logits(
    model: nn.Module,
    data: DataPipeline,
    device: torch.device | str,
    precision: str = "fp32",
    split: str = "val",
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and labels of every image of ``split``, on the CPU, in eval mode."""
    loader, transform = data.split_loader(split, channels_last=False)
    logits, labels = all_logits(model, loader, transform, device, precision)
    if not len(logits):
        return torch.empty(0, len(data.classes)), labels
    return logits, labels


def calibrate_run(
    model: nn.Module,
    data: DataPipeline,
    device: torch.device | str,
    precision: str,
    run: RunDir,
    meta: ModelMeta,
    split: str = "val",
) -> dict[str, Any] | None:
    """Fit the temperature of ``model`` (the best weights) on ``split`` and record it.

    Writes ``run.calibration`` and ``run.meta`` (``meta`` with its ``temperature`` set; the
    object is updated too). Returns ``{"temperature", "ece_before", "ece_after"}`` for
    summary.json, or None when there is no such split (nothing to fit on: the model stays
    uncalibrated) or the model has a single output. With fewer than
    ``MIN_CALIBRATION_IMAGES`` images, or a fit that ends at a bound of T, nothing is
    recorded (the model stays uncalibrated, T = 1) and ``{"calibration_skipped": why}``
    says so, with the count."""
    splits = data.source.splits
    if split not in splits or len(splits[split]) == 0 or len(data.classes) < 2:
        return None
    n = len(splits[split])
    if n < MIN_CALIBRATION_IMAGES:
        return _skipped(
            run,
            f"{n} {split} image(s), fewer than the {MIN_CALIBRATION_IMAGES} a "
            "temperature needs: left uncalibrated (T = 1)",
        )
    logits, labels = validation_logits(model, data, device, precision, split)
    found = calibration_summary(logits, labels)
    t = float(found["temperature"])
    if t >= MAX_TEMPERATURE or t <= MIN_TEMPERATURE:
        right = float((logits.argmax(1) == labels).double().mean()) if len(labels) else 0.0
        return _skipped(
            run,
            f"the temperature fitted on {n} {split} images ended at its bound "
            f"{t:g} (top-1 there {right:.1%}): no single T calibrates this model; "
            "left uncalibrated (T = 1)",
        )
    record = {"split": split, "num_samples": len(labels), **found}
    atomic_write_text(run.calibration, json.dumps(record, indent=2) + "\n")
    meta.temperature = float(found["temperature"])
    atomic_write_text(run.meta, meta.dumps())
    return {k: found[k] for k in SUMMARY_KEYS}


def _skipped(run: RunDir, why: str) -> dict[str, Any]:
    """No temperature recorded; a calibration.json of an earlier end of this run is removed,
    so that nothing shows a temperature the model no longer has."""
    run.calibration.unlink(missing_ok=True)
    return {"calibration_skipped": why}


def fit_thresholds(
    model: nn.Module,
    data: DataPipeline,
    device: torch.device | str,
    precision: str,
    run: RunDir,
    meta: ModelMeta,
    split: str = "val",
) -> dict[str, Any] | None:
    """Multi-label: choose each class's threshold where its F1 on ``split`` is highest.

    Writes ``run.calibration`` (the thresholds and the split's measures at them) and
    ``run.meta`` with ``thresholds`` set. Returns ``{"thresholds": {class: t}}`` for
    summary.json, or None without such a split (every threshold stays 0.5)."""
    splits = data.source.splits
    if split not in splits or len(splits[split]) == 0:
        return None
    logits, labels = validation_logits(model, data, device, precision, split)
    thresholds = choose_thresholds(probabilities(logits), labels)
    found = multilabel_metrics(probabilities(logits), labels, data.classes, thresholds)
    by_class = dict(zip(data.classes, thresholds))
    record = {
        "task": "multilabel",
        "split": split,
        "num_samples": len(labels),
        "thresholds": by_class,
        "map": found["map"],
        "f1_macro": found["f1_macro"],
        "f1_micro": found["f1_micro"],
    }
    atomic_write_text(run.calibration, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    meta.thresholds = thresholds
    atomic_write_text(run.meta, meta.dumps())
    return {"thresholds": by_class}


def multilabel_test(
    model: nn.Module,
    data: DataPipeline,
    device: torch.device | str,
    precision: str,
    thresholds: list[float] | None,
    split: str = "test",
) -> dict[str, Any]:
    """The summary's test measures of a multi-label run, at its thresholds."""
    logits, labels = validation_logits(model, data, device, precision, split)
    found = multilabel_metrics(probabilities(logits), labels, data.classes, thresholds)
    return {
        "test_map": found["map"],
        "test_f1_micro": found["f1_micro"],
        "test_f1_macro": found["f1_macro"],
        "test_exact_match": found["exact_match"],
    }
