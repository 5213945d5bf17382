"""Evaluation: top-1/top-5, balanced accuracy, macro-F1, calibration error, loss, per-class
precision/recall/F1, confusion matrix, top losses (with where the model looked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..artifacts.run import output_folder
from ..core.errors import ConfigError
from ..core.files import atomic_write_text
from ..core.progress import Meter
from ..data import DataError
from ..inference.backends import create_backend
from ..inference.loading import LoadedModel, load_model, run_pipeline
from ..metrics.calibration import apply_temperature, expected_calibration_error
from ..metrics.logits import accuracy_counts, iter_logits
from ..tasks import task_of


def per_class_metrics(cm: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall, F1, support per class from a confusion matrix (rows: true)."""
    out = {}
    for i, name in enumerate(classes):
        tp = float(cm[i, i])
        predicted, actual = float(cm[:, i].sum()), float(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual)}
    return out


def balanced_metrics(cm: np.ndarray) -> dict[str, float]:
    """Balanced accuracy and macro-F1 from a confusion matrix (rows: true), as scikit-learn
    computes them: the mean recall over the classes that occur, and the mean F1 over the
    classes that occur or are predicted. On a 10:1 split, always answering the big class has
    top-1 0.91 but balanced accuracy 0.5: these two say what top-1 hides."""
    tp = np.diag(cm).astype(np.float64)
    actual, predicted = cm.sum(1).astype(np.float64), cm.sum(0).astype(np.float64)
    present = actual > 0
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    seen = present | (predicted > 0)
    return {
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "f1_macro": float(f1[seen].mean()) if seen.any() else 0.0,
    }


def _label_map(model_classes: list[str], data_classes: list[str]) -> torch.Tensor:
    """Data label index -> model output index, by class name."""
    index = {c: i for i, c in enumerate(model_classes)}
    missing = [c for c in data_classes if c not in index]
    if missing:
        raise DataError(
            f"the data has classes the model was not trained on: {', '.join(missing[:10])}"
        )
    return torch.tensor([index[c] for c in data_classes], dtype=torch.long)


def evaluate_run(
    run: str | LoadedModel,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 64,
    tta: bool = False,
    top_losses: int = 0,
    out_dir: str | Path | None = None,
    precision: str = "auto",
    max_bad_fraction: float | None = None,
    backend: str = "auto",
    device: str | torch.device | None = None,
    gradcam: bool = True,
    progress: bool = False,
    figures: dict | None = None,
) -> dict:
    """Evaluate a trained model on a split of ``data`` (default: the data it was trained on,
    split as it was then, with the run's --max-bad-fraction).

    ``progress``: show the images done (``progress.Meter``: a bar in a notebook or on a
    terminal, a line every 30 s in a log), as the Python API's ``Run.evaluate`` does.
    ``figures``: a dict that gets each written PNG's matplotlib Figure under its key in
    ``files`` (``confusion_matrix_png``...), for ``Evaluation.figures``.

    Probabilities (top losses, ``ece``) go through the run's calibration temperature when it
    has one. With ``top_losses`` and ``gradcam``, a second gallery shows the Grad-CAM heat of
    each wrong answer (needs Captum; without it ``gradcam_note`` says why it is missing).

    The files go to ``out_dir``, else to ``RUN/eval-SPLIT``; a folder that cannot be written
    (a read-only run) is refused before the evaluation starts."""
    loaded = run if isinstance(run, LoadedModel) else load_model(run)
    pipe = run_pipeline(loaded, data, batch_size, max_bad_fraction)
    source = pipe.source
    if split is None:
        split = "test" if "test" in source.splits else "val"
    if split not in source.splits:
        raise DataError(
            f"{pipe.cfg.data} has no {split!r} split (it has {', '.join(source.splits)}); "
            "give --data with held-out images of their own"
        )
    label_map = _label_map(loaded.classes, source.classes)
    out_dir = output_folder(out_dir, loaded.home.eval_dir(split), "the evaluation files")
    note = None
    if backend == "auto":
        from ..inference.choice import choose_backend

        choice = choose_backend(loaded, device, precision)
        backend, precision, note = choice.backend, choice.precision, choice.note
    runner = create_backend(backend, loaded, device if backend == "torch" else "cpu", precision)
    loader, tf = pipe.split_loader(split, channels_last=runner.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not tta:
            return runner.logits(x)
        return (runner.logits(x) + runner.logits(x.flip(3))) / 2

    all_logits, all_labels = [], []
    # The backend applies its own precision; batches go to its device.
    with Meter(f"evaluate {split}", len(source.splits[split]), enabled=progress) as meter:
        for out, y in iter_logits(forward, loader, tf, runner.device, "fp32"):
            all_logits.append(out.cpu())
            all_labels.append(y.cpu())
            meter.update(len(y))
    measure = _MEASURES[task_of(loaded.meta).name]
    logits = torch.cat(all_logits) if all_logits else torch.zeros(0, len(loaded.classes))
    found = measure(
        loaded, logits, all_labels, label_map, source.splits[split], top_losses, gradcam
    )
    result = {
        "run": str(loaded.run or loaded.source) if run is loaded else str(run),
        "data": pipe.cfg.data,
        "split": split,
        **found,
        "tta": tta,
        "backend": runner.name,
        "precision": runner.precision,
        "backend_note": note,
    }
    return _write_result(result, out_dir, loaded, split, figures)


def _evaluate_multiclass(
    loaded: LoadedModel,
    logits: torch.Tensor,
    labels: list[torch.Tensor],
    label_map: torch.Tensor,
    split_data,
    top_losses: int,
    gradcam: bool,
) -> dict:
    """Top-1/top-5, balanced accuracy, per-class precision/recall/F1, the confusion matrix,
    the expected calibration error at the run's temperature and (``top_losses``) the wrong
    answers with the highest loss."""
    targets = label_map[torch.cat(labels)] if labels else torch.zeros(0, dtype=torch.long)
    n_cls = len(loaded.classes)
    losses = F.cross_entropy(logits, targets, reduction="none")
    pred = logits.argmax(1)
    cm = np.zeros((n_cls, n_cls), dtype=np.int64)
    np.add.at(cm, (targets.numpy(), pred.numpy()), 1)
    n = len(targets)
    top1, top5 = (count / max(n, 1) for count in accuracy_counts(logits, targets, 5).tolist())
    temperature = loaded.meta.temperature
    probs = apply_temperature(logits, temperature)
    # One class (or no sample) has no calibration to measure.
    ece = expected_calibration_error(probs, targets) if n and n_cls > 1 else None
    result = {
        "top1": top1,
        "top5": top5,
        **balanced_metrics(cm),
        "loss": float(losses.mean()) if n else 0.0,
        "num_samples": n,
        "ece": ece,
        "temperature": temperature,
        "classes": list(loaded.classes),
        "per_class": per_class_metrics(cm, loaded.classes),
        "confusion_matrix": cm.tolist(),
        # Rows divided by their totals: the recall of each true class across predictions.
        "confusion_matrix_normalized": (cm / np.maximum(cm.sum(1, keepdims=True), 1)).tolist(),
    }
    from ..core.plots import plot_confusion

    def draw_confusion(path: Path):
        return plot_confusion(cm, loaded.classes, path)

    result["files"] = {}
    result["_plots"] = [("confusion_matrix_png", "confusion_matrix.png", draw_confusion)]
    if top_losses:
        wrong = (pred != targets).nonzero().flatten()
        order = wrong[losses[wrong].argsort(descending=True)][:top_losses]
        items = []
        for i in order.tolist():
            items.append(
                {
                    "index": i,
                    "path": str(split_data.paths[i]) if split_data.paths else None,
                    "true": loaded.classes[int(targets[i])],
                    "pred": loaded.classes[int(pred[i])],
                    "prob": float(probs[i, pred[i]]),
                    "loss": float(losses[i]),
                }
            )
        result["top_losses"] = items
        result["_gallery"] = (items, split_data, gradcam)
    return result


def _to_model_columns(targets: torch.Tensor, label_map: torch.Tensor, loaded) -> torch.Tensor:
    """Multi-hot rows in the data's class order -> the model's class order."""
    out = torch.zeros(targets.shape[0], len(loaded.classes))
    out[:, label_map] = targets.float()
    return out


def _evaluate_multilabel(
    loaded: LoadedModel,
    logits: torch.Tensor,
    labels: list[torch.Tensor],
    label_map: torch.Tensor,
    split_data,
    top_losses: int,
    gradcam: bool,
) -> dict:
    """mAP, micro/macro F1 at the run's thresholds, per-class AP/F1, label frequencies, the
    precision-recall curves and (``top_losses``) the images with the highest loss."""
    from ..core.plots import plot_pr_curves
    from ..metrics.multilabel import (
        chance_map,
        decisions,
        multilabel_loss,
        multilabel_metrics,
        probabilities,
    )

    targets = torch.cat(labels) if labels else torch.zeros(0, len(label_map))
    targets = _to_model_columns(targets, label_map, loaded)
    classes, thresholds = loaded.classes, loaded.meta.thresholds
    probs = probabilities(logits)
    found = multilabel_metrics(probs, targets, classes, thresholds)
    n = len(targets)
    result = {
        "task": "multilabel",
        "map": found["map"],
        "chance_map": chance_map(targets) if n else None,
        "f1_micro": found["f1_micro"],
        "f1_macro": found["f1_macro"],
        "exact_match": found["exact_match"],
        "hamming_accuracy": found["hamming_accuracy"],
        "top1": None,
        "top5": None,
        "loss": _mean_loss(multilabel_loss, logits, targets),
        "num_samples": n,
        "thresholds": dict(zip(classes, thresholds)) if thresholds else None,
        "classes": list(classes),
        "per_class": found["per_class"],
        "files": {},
    }
    ap = {k: v["ap"] for k, v in found["per_class"].items()}

    def draw_pr(path: Path):
        return plot_pr_curves(probs, targets, classes, ap, path)

    result["_plots"] = [("pr_curves_png", "pr_curves.png", draw_pr)]
    if top_losses and n:
        per_image = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, reduction="none"
        )
        pred = decisions(probs, thresholds)
        wrong = (pred != (targets > 0.5)).any(1).nonzero().flatten()
        order = wrong[per_image.mean(1)[wrong].argsort(descending=True)][:top_losses]

        def names(row) -> str:
            return " | ".join(classes[j] for j in row.nonzero().flatten().tolist()) or "none"

        items = []
        for i in order.tolist():
            worst = int(per_image[i].argmax())  # the label the model is most wrong about
            shown = [f"{classes[j]} {probs[i, j]:.0%}" for j in pred[i].nonzero().flatten()]
            items.append(
                {
                    "index": i,
                    "path": str(split_data.paths[i]) if split_data.paths else None,
                    "true": names(targets[i] > 0.5),
                    "pred": names(pred[i]),
                    "pred_text": "pred " + (", ".join(shown) or "none"),
                    "prob": float(probs[i, worst]),
                    "worst_label": classes[worst],
                    "loss": float(per_image[i].mean()),
                }
            )
        result["top_losses"] = items
        result["_gallery"] = (items, split_data, gradcam)
    return result


def _write_result(
    result: dict, out_dir, loaded: LoadedModel, split: str, figures: dict | None = None
) -> dict:
    """Draw the result's plots and galleries into the evaluation folder; write metrics.json.
    ``figures`` (when given) gets each Figure drawn, under its key in ``files``."""
    from ..core.plots import plot_top_losses

    drawn = {} if figures is None else figures
    out = Path(out_dir) if out_dir else loaded.home.eval_dir(split)
    out.mkdir(parents=True, exist_ok=True)
    for key, name, draw in result.pop("_plots", []):
        drawn[key] = draw(out / name)
        result["files"][key] = str(out / name)
    gallery = result.pop("_gallery", None)
    if gallery is not None:
        items, split_data, gradcam = gallery
        images = [_display_image(split_data, it["index"]) for it in items]
        drawn["top_losses_png"] = plot_top_losses(images, items, out / "top_losses.png")
        result["files"]["top_losses_png"] = str(out / "top_losses.png")
        if gradcam and items:
            try:
                drawn["top_losses_gradcam_png"] = _gradcam_gallery(
                    loaded, split_data, items, out / "top_losses_gradcam.png"
                )
                result["files"]["top_losses_gradcam_png"] = str(out / "top_losses_gradcam.png")
            except ConfigError as exc:  # Captum not installed: the plain gallery still stands
                result["gradcam_note"] = str(exc)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, ensure_ascii=False))
    result["files"]["metrics_json"] = str(out / "metrics.json")
    return result


def _gradcam_gallery(loaded: LoadedModel, split, items: list[dict], path: Path):
    """The top-losses gallery again, each image under the Grad-CAM heat of the class the model
    wrongly chose: where it looked for its wrong answer."""
    from ..core.plots import plot_top_losses
    from ..data.images import open_image
    from ..data.transforms import stack_images
    from .explain import Explainer

    ex = Explainer.from_loaded(loaded)
    images = [
        ex.prepare(
            split.images[it["index"]]
            if split.images is not None
            else open_image(split.paths[it["index"]], ex.in_chans)
        )
        for it in items
    ]
    # The class it wrongly chose (multi-label: the label it is most wrong about).
    targets = [loaded.classes.index(it.get("worst_label", it["pred"])) for it in items]
    shown = [np.asarray(e.overlay()) for e in ex.explain_batch(stack_images(images), targets)]
    return plot_top_losses(shown, items, path)


def _display_image(split, index: int) -> np.ndarray:
    from ..data.images import open_image

    if split.images is not None:
        a = split.images[index].permute(1, 2, 0).numpy()
        return a[:, :, 0] if a.shape[2] == 1 else a
    return np.asarray(open_image(split.paths[index]))


def _mean_loss(loss, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """``loss`` averaged over the images (0 for none)."""
    return float(loss(logits, targets)) if len(targets) else 0.0


# what evaluation measures, by task
_MEASURES = {"multiclass": _evaluate_multiclass, "multilabel": _evaluate_multilabel}
