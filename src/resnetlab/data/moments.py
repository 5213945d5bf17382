"""Per-image statistics of uint8 images, summed exactly and a bounded chunk at a time: the
mean and std of a data set without a float copy of it (``stats``, ``stream``, the pipeline)."""

from __future__ import annotations

import numpy as np
import torch

# uint8 bytes of images summed at a time: the integer temporaries are 4 and 8 times this.
# Small chunks are also the fast ones (they stay in the caches; 8 MiB was 9 times slower).
CHUNK_BYTES = 2**20


def image_moments(images: torch.Tensor) -> np.ndarray:
    """Per image and channel, the mean and the mean square of its [0, 1] pixel values:
    ``(N, 2, C)`` float64 from uint8 ``(N, C, H, W)`` (or one ``(C, H, W)``). Summed exactly
    in integers, ``CHUNK_BYTES`` of images (or rows of one image) at a time."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    n, c, h, w = images.shape
    out = np.zeros((n, 2, c))
    if n == 0 or h * w == 0:
        return out
    step = max(1, CHUNK_BYTES // (c * h * w))
    rows = h if step > 1 else max(1, CHUNK_BYTES // (c * w))
    for a in range(0, n, step):
        s = torch.zeros(min(step, n - a), c, dtype=torch.int64)
        q = torch.zeros_like(s)
        for r in range(0, h, rows):
            v = images[a : a + step, :, r : r + rows].to(torch.int32)
            s += v.sum(dim=(2, 3), dtype=torch.int64)
            q += v.mul_(v).sum(dim=(2, 3), dtype=torch.int64)  # 255² fits an int32
        out[a : a + step, 0] = s.numpy() / (255.0 * h * w)
        out[a : a + step, 1] = q.numpy() / (255.0**2 * h * w)
    return out


def stats_from_moments(moments: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and std per channel of images of equal weight, from their ``image_moments``."""
    channels = moments.shape[-1]
    if len(moments) == 0:
        return [0.0] * channels, [1.0] * channels
    mean = moments[:, 0].mean(0)
    var = np.maximum(moments[:, 1].mean(0) - mean**2, 0.0)
    return [float(v) for v in mean], [float(v) for v in np.sqrt(var)]
