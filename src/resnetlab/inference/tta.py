"""Test-time augmentation: a batch's logits averaged over views of it (``--tta flip|flip-crops``
in ``predict``, ``serve`` and ``Predictor(tta=...)``).

Views of the model's input batch (N, C, S, S), after its preprocessing:

- ``flip``: the batch and its horizontal mirror: 2 passes of the model (x2 the time).
- ``crops``: the batch at the centre and shifted by S/8 pixels towards each of the four corners
  (the image padded by reflection, as the CIFAR preset's training crops are), no mirror: for
  images that are not left-right symmetric (digits, text; the small preset never flips): 5
  passes (x5 the time).
- ``flip-crops``: both: the batch and its mirror, each at those 5 places: 10 passes (x10).

The maths: the views' **logits** are averaged, and the run's calibration is applied to the mean
once, as to a single pass: ``softmax(mean_v(z_v) / T)`` (multi-label: the sigmoid of the mean
logit, compared with each class's threshold). The temperature T was fitted on single-pass
logits, and the mean of the views' logits is a logit of the same kind (same scale, same
classes' margins), so T keeps its meaning; the calibrated probabilities of the views are never
averaged (a mean of tempered softmaxes is not the softmax of anything T was fitted on, and
T would be applied V times). ``evaluate --tta`` averages logits the same way.

Each view is a separate call of the backend with the batch's own size, so a batch gives the same
answer alone or micro-batched (``serve``) and no backend sees a batch larger than it was given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from ..core.errors import ConfigError

TTA_MODES = ("none", "flip", "crops", "flip-crops")
PASSES = {"none": 1, "flip": 2, "crops": 5, "flip-crops": 10}
CROP_SHIFT = 8  # crops: shifted by the side / 8 (4 px at 32, 28 px at 224)


def check_tta(mode: str | None) -> str:
    """``mode`` (None: "none") when it is one we know; otherwise a one-line ``ConfigError``."""
    mode = mode or "none"
    if mode not in TTA_MODES:
        raise ConfigError(f"--tta {mode!r} is not one of {', '.join(TTA_MODES)}")
    return mode


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by (dy, dx) pixels, the edge filled by reflection (same size)."""
    if not dy and not dx:
        return x
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    top, left = p + dy, p + dx
    return padded[..., top : top + h, left : left + w]


def views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The model inputs whose logits ``mode`` averages, the batch itself first."""
    mode = check_tta(mode)
    base = [x] if mode in ("none", "crops") else [x, x.flip(-1)]
    if mode not in ("crops", "flip-crops"):
        return base
    s = max(1, min(x.shape[-2:]) // CROP_SHIFT)
    corners = [(-s, -s), (-s, s), (s, -s), (s, s)]
    return [v for b in base for v in [b, *(shifted(b, dy, dx) for dy, dx in corners)]]


def tta_logits(
    logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str
) -> torch.Tensor:
    """The mean of ``logits(view)`` over the views ``mode`` makes of the batch ``x``."""
    mode = check_tta(mode)
    if mode == "none":
        return logits(x)
    total = None
    parts = views(x, mode)
    for v in parts:
        out = logits(v.contiguous(memory_format=_format(x)))
        total = out.float() if total is None else total + out.float()
    return total / len(parts)


def _format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
