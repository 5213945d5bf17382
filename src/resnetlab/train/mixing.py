"""Mixup (Zhang et al., arXiv:1710.09412) and CutMix (Yun et al., arXiv:1905.04899)."""

from __future__ import annotations

import math

import numpy as np
import torch


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float, seed: int):
    """Returns (x, y_a, y_b, lam): the loss is lam * CE(y_a) + (1 - lam) * CE(y_b).

    With both on, each batch uses one of them at random. Seeded per step, so a resumed run
    mixes exactly as an uninterrupted one."""
    if not (mixup > 0 or cutmix > 0):
        return x, y, y, 1.0
    rng = np.random.default_rng(seed)
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)  # the area actually pasted
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, y, y[perm], lam
