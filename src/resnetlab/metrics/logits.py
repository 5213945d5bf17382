"""The one loop that runs a model over a loader for its logits, and top-k counts.

The engine's validation, ``evaluate``, calibration and the int8 comparison of ``export`` all go
through ``iter_logits``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..core.device import autocast


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(top-1 correct, top-k correct) as a device tensor; no host sync. A ``k`` above the
    number of classes counts every class."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()]).float()


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
