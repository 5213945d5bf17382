"""The evaluation loop and run-level checks shared by the engine and the tools after training.

``iter_logits`` is the one loop that runs a model over a loader for its logits: the engine's
validation, ``evaluate`` and the int8 comparison of ``export`` all go through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..device import autocast
from ..multilabel import multilabel_metrics, probabilities
from . import distributed as D


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(top-1 correct, top-k correct) as a device tensor; no host sync. A ``k`` above the
    number of classes counts every class."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()]).float()


def state_checksum(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state_dict (ranks of a DDP run must agree)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def iter_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader,
    transform: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits, labels) on ``device`` for each batch of ``loader``: inputs preprocessed
    by ``transform``, ``forward`` run under inference mode and autocast; at most ``limit``
    images (the last batch cut short)."""
    device = torch.device(device)
    seen = 0
    for x, y in loader:
        if limit is not None:
            if seen >= limit:
                return
            x, y = x[: limit - seen], y[: limit - seen]
            seen += len(y)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.inference_mode(), autocast(precision, device):
            out = forward(transform(x))
        yield out.float(), y


@torch.inference_mode()
def evaluate_loader(
    model, loader, transform, device, precision, dist_info=None, multilabel: bool = False
) -> dict:
    """Loss, top-1, top-5 and count over ``loader`` (summed across ranks under DDP).
    ``multilabel``: binary cross-entropy, mAP, exact match and micro-F1 at 0.5 instead."""
    if multilabel:
        return _evaluate_multilabel(model, loader, transform, device, precision, dist_info)
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


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
    """Binary cross-entropy per image (the mean over its classes); ``reduction`` over images."""
    per_image = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none"
    ).mean(1)
    return per_image.sum() if reduction == "sum" else per_image.mean()


def all_logits(model, loader, transform, device, precision) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and labels of every batch of ``loader``, on the CPU, in eval mode (the
    model's mode is restored after); empty tensors when the loader gives nothing."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for out, y in iter_logits(model, loader, transform, device, precision):
            logits.append(out.cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def _evaluate_multilabel(model, loader, transform, device, precision, dist_info) -> dict:
    logits, targets = all_logits(model, loader, transform, device, precision)
    if dist_info is not None:
        logits, targets = D.gather_cat(logits, dist_info), D.gather_cat(targets, dist_info)
    n = len(targets)
    if n == 0:
        return {"loss": 0.0, "map": None, "exact_match": 0.0, "f1_micro": 0.0, "num_samples": 0}
    found = multilabel_metrics(probabilities(logits), targets, [str(i) for i in range(
        targets.shape[1])])  # fmt: skip
    return {
        "loss": float(multilabel_loss(logits, targets)),
        "map": found["map"],
        "exact_match": found["exact_match"],
        "f1_micro": found["f1_micro"],
        "num_samples": n,
    }
