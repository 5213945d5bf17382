"""Multi-label classification (``--task multilabel``): several labels per image, one sigmoid
output per class, each with its own decision threshold.

The measures are those of the multi-label literature and scikit-learn: average precision per
class (the area under its precision-recall curve, as ``average_precision_score`` computes it)
and their mean (mAP, over the classes that occur), F1 per class at its threshold, micro-F1
(every decision pooled) and macro-F1 (the mean over classes), and the exact-match ratio (every
label of an image right). Thresholds are chosen per class on the validation split, where F1 is
highest; a class without a positive example there keeps 0.5.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

TASKS = ("multiclass", "multilabel")
DEFAULT_THRESHOLD = 0.5
LABEL_SEPARATOR = "|"


def is_multilabel(task: str | None) -> bool:
    return task == "multilabel"


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Independent per-class probabilities: the sigmoid of each logit."""
    return torch.sigmoid(logits.float())


def smoothed_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Multi-hot targets with label smoothing as for binary cross-entropy: 1 becomes
    1 - smoothing + smoothing/C and 0 becomes smoothing/C (timm's BinaryCrossEntropy)."""
    if not smoothing:
        return targets
    off = smoothing / targets.shape[1]
    return targets * (1.0 - smoothing) + off


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of each column: sum over the ranked positives of the precision at
    each, divided by the positives (scikit-learn's definition; tied scores are one threshold).
    NaN for a class without any positive."""
    scores, targets = scores.double(), (targets > 0.5).double()
    n, c = scores.shape
    out = torch.full((c,), float("nan"), dtype=torch.float64)
    for j in range(c):
        positives = targets[:, j].sum()
        if positives == 0:
            continue
        order = torch.argsort(scores[:, j], descending=True, stable=True)
        s, t = scores[order, j], targets[order, j]
        tp, seen = torch.cumsum(t, 0), torch.arange(1, n + 1, dtype=torch.float64)
        # The last index of each run of tied scores: one threshold each.
        last = torch.ones(n, dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]
        tp, seen = tp[last], seen[last]
        precision, recall = tp / seen, tp / positives
        previous = torch.cat([recall.new_zeros(1), recall[:-1]])
        out[j] = ((recall - previous) * precision).sum()
    return out


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1e-12), torch.zeros_like(denom))


def choose_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per class, the threshold with the highest F1 on these (validation) probabilities: the
    midpoint between the lowest score taken and the next one below it, so that a score seen
    during training decides the same way after rounding. 0.5 for a class without positives."""
    probs, targets = probs.double(), targets > 0.5
    thresholds = []
    for j in range(probs.shape[1]):
        positives = int(targets[:, j].sum())
        if positives == 0:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = torch.argsort(probs[:, j], descending=True, stable=True)
        s, t = probs[order, j], targets[order, j].double()
        tp = torch.cumsum(t, 0)
        fp = torch.cumsum(1 - t, 0)
        last = torch.ones(len(s), dtype=torch.bool)  # one candidate per distinct score
        last[:-1] = s[1:] != s[:-1]
        f1 = _f1(tp, fp, positives - tp)
        f1[~last] = -1
        k = int(torch.argmax(f1))
        below = float(s[k + 1]) if k + 1 < len(s) else 0.0
        thresholds.append(float((float(s[k]) + below) / 2))
    return thresholds


def decisions(probs: torch.Tensor, thresholds: list[float] | None) -> torch.Tensor:
    """Boolean (N, C): which labels each image carries at the thresholds (0.5 without)."""
    if thresholds is None:
        thresholds = [DEFAULT_THRESHOLD] * probs.shape[1]
    return probs >= torch.tensor(thresholds, dtype=probs.dtype)


def multilabel_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    classes: list[str],
    thresholds: list[float] | None = None,
) -> dict:
    """mAP, micro/macro F1, exact match and per-class AP/F1/precision/recall/support."""
    truth = targets > 0.5
    pred = decisions(probs, thresholds)
    tp = (pred & truth).sum(0).double()
    fp = (pred & ~truth).sum(0).double()
    fn = (~pred & truth).sum(0).double()
    ap = average_precision(probs, truth)
    f1 = _f1(tp, fp, fn)
    present = truth.sum(0) > 0
    seen = present | (pred.sum(0) > 0)
    per_class = {}
    for j, name in enumerate(classes):
        predicted, actual = float(tp[j] + fp[j]), float(tp[j] + fn[j])
        per_class[name] = {
            "ap": None if torch.isnan(ap[j]) else float(ap[j]),
            "f1": float(f1[j]),
            "precision": float(tp[j]) / predicted if predicted else 0.0,
            "recall": float(tp[j]) / actual if actual else 0.0,
            "support": int(actual),
            "threshold": float(thresholds[j]) if thresholds else DEFAULT_THRESHOLD,
        }
    n = len(truth)
    return {
        "map": float(ap[present].mean()) if present.any() else None,
        "f1_micro": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "f1_macro": float(f1[seen].mean()) if seen.any() else 0.0,
        "exact_match": float((pred == truth).all(1).double().mean()) if n else 0.0,
        "hamming_accuracy": float((pred == truth).double().mean()) if n else 0.0,
        "per_class": per_class,
    }


def chance_map(targets: torch.Tensor) -> float:
    """The mAP of scores that know nothing: each class's AP is then its frequency."""
    truth = targets > 0.5
    present = truth.sum(0) > 0
    return float(truth.double().mean(0)[present].mean()) if present.any() else 0.0


def label_rows(
    probs: torch.Tensor, classes: list[str], thresholds: list[float] | None, topk: int | None
) -> list[list[dict]]:
    """Per image, every label at or above its threshold, most probable first (``topk``: at
    most that many), each ``{"label", "index", "prob", "threshold"}``."""
    if thresholds is None:
        thresholds = [DEFAULT_THRESHOLD] * probs.shape[1]
    rows = []
    for p in probs.tolist():
        hits = [
            {"label": classes[i], "index": i, "prob": float(v), "threshold": thresholds[i]}
            for i, v in enumerate(p)
            if v >= thresholds[i]
        ]
        hits.sort(key=lambda h: -h["prob"])
        rows.append(hits[:topk] if topk else hits)
    return rows


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
    """Binary cross-entropy per image (the mean over its classes); ``reduction`` over images."""
    per_image = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none"
    ).mean(1)
    return per_image.sum() if reduction == "sum" else per_image.mean()
