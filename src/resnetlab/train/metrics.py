"""Validation during training: loss and accuracy (or the multi-label measures) over a loader,
summed across the ranks of a DDP run. The logits loop itself is ``metrics.logits``'s."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..metrics.logits import accuracy_counts, all_logits, iter_logits
from ..metrics.multilabel import multilabel_loss, multilabel_metrics, probabilities
from ..tasks import task_of
from . import distributed as D


@torch.inference_mode()
def evaluate_loader(model, loader, transform, device, precision, dist_info=None, task=None) -> dict:
    """Loss, top-1, top-5 and count over ``loader`` (summed across ranks under DDP).
    A multi-label ``task``: binary cross-entropy, mAP, exact match and micro-F1 at 0.5."""
    return _EVALUATORS[task_of(task).name](model, loader, transform, device, precision, dist_info)


def _evaluate_multiclass(model, loader, transform, device, precision, dist_info) -> dict:
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device)  # loss sum, top1, top5, n
    try:
        for out, y in iter_logits(model, loader, transform, device, precision):
            loss = F.cross_entropy(out, y, reduction="sum")
            sums += torch.cat(
                [loss.view(1), accuracy_counts(out, y), sums.new_tensor([y.shape[0]])]
            )
    finally:
        model.train(was_training)
    if dist_info is not None:
        sums = D.all_reduce_sum(sums, dist_info)
    s = sums.cpu().tolist()
    n = max(s[3], 1.0)
    return {"loss": s[0] / n, "top1": s[1] / n, "top5": s[2] / n, "num_samples": int(s[3])}


def _evaluate_multilabel(model, loader, transform, device, precision, dist_info) -> dict:
    logits, targets = all_logits(model, loader, transform, device, precision)
    if dist_info is not None:
        logits, targets = D.gather_cat(logits, dist_info), D.gather_cat(targets, dist_info)
    n = len(targets)
    if n == 0:
        return {"loss": 0.0, "map": None, "exact_match": 0.0, "f1_micro": 0.0, "num_samples": 0}
    found = multilabel_metrics(
        probabilities(logits), targets, [str(i) for i in range(targets.shape[1])]
    )
    return {
        "loss": float(multilabel_loss(logits, targets)),
        "map": found["map"],
        "exact_match": found["exact_match"],
        "f1_micro": found["f1_micro"],
        "num_samples": n,
    }


# how each task measures a loader
_EVALUATORS = {"multiclass": _evaluate_multiclass, "multilabel": _evaluate_multilabel}
