"""Gradient accumulation: one optimizer step's batch run as several micro-batches.

``--batch-size`` stays the images per optimizer step (the effective batch, the one the
learning rate is for); ``--accum-steps N`` only cuts it into N micro-batches run one after
another, so activations of a single micro-batch are held at a time. Each micro-batch's mean
loss is weighted by its share of the batch, so the summed gradients are those of the whole
batch's mean loss: without batch statistics (GroupNorm, no norm) the update is the same as one
big batch, up to float rounding. BatchNorm layers see micro-batches, as in every framework.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn


def micro_batches(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of ``range(n)``, sizes differing by at most one."""
    parts = max(1, min(parts, n))
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def accumulate_gradients(
    model: nn.Module,
    x: torch.Tensor,
    loss_of: Callable[[torch.Tensor, slice], torch.Tensor],
    parts: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward over ``parts`` micro-batches of ``x``, gradients summed into the
    parameters' ``.grad``. ``loss_of(logits, rows)``: the mean loss of the micro-batch at
    ``rows``; ``backward(loss)``: e.g. a GradScaler's scaled backward; ``forward``: the
    model's call (default ``model``, under autocast by the caller). Returns the batch's mean
    loss (detached) and its float logits."""
    forward = forward or model
    slices = micro_batches(len(x), parts)
    if len(slices) == 1:  # the plain step, computed exactly as without accumulation
        out = forward(x).float()
        loss = loss_of(out, slices[0])
        backward(loss)
        return loss.detach(), out
    # Under DDP, gradients are all-reduced once, on the last micro-batch only.
    no_sync = getattr(model, "no_sync", None)
    outs, total = [], None
    for k, rows in enumerate(slices):
        last = k == len(slices) - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            out = forward(x[rows]).float()
            loss = loss_of(out, rows) * ((rows.stop - rows.start) / len(x))
            backward(loss)
        outs.append(out.detach())
        total = loss.detach() if total is None else total + loss.detach()
    return total, torch.cat(outs)
