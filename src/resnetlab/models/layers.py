"""Small parameter-light layers several model families share: squeeze-excitation, stochastic
depth, and a classifier stored as a 1x1 convolution.

Attribute names follow timm (``se.fc1``, ``se.fc2``, ``drop_path``), so timm state_dicts load
into the blocks that use these layers unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import ConfigError

ATTN_LAYERS = ("se",)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), as timm
    does for its squeeze-excitation widths, so that its weights have our shapes."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SEModule(nn.Module):
    """Squeeze-and-excitation (Hu et al., arXiv:1709.01507): global average pool, a 1x1 conv
    down to ``channels / 16`` (the paper's reduction ratio r = 16, sec. 6.1), ReLU, a 1x1 conv
    back up, sigmoid, and a channel-wise rescale of the input."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16) -> None:
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


def check_attn_layer(attn_layer: str | None) -> str | None:
    if attn_layer is not None and attn_layer not in ATTN_LAYERS:
        raise ConfigError(
            f"attn_layer={attn_layer!r} is not one of {', '.join(ATTN_LAYERS)} (or None)"
        )
    return attn_layer


def create_attn(attn_layer: str | None, channels: int) -> nn.Module | None:
    """The attention module named by ``attn_layer`` (None: no module, and no state_dict keys)."""
    if check_attn_layer(attn_layer) is None:
        return None
    return SEModule(channels)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., arXiv:1603.09382): in training, drop a residual
    branch for a random subset of the samples and scale the kept ones by 1 / (1 - p), so the
    expected output is unchanged and evaluation needs no rescaling."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> list[float]:
    """Per-block drop probabilities rising linearly from 0 at the first block to
    ``drop_path_rate`` at the last: the "linear decay" rule of Huang et al. (sec. 3), the one
    timm uses, so a block's rate depends only on its position in the whole network."""
    rate = float(drop_path_rate)
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    if num_blocks < 2:
        return [0.0] * num_blocks
    return [rate * i / (num_blocks - 1) for i in range(num_blocks)]


def stage_drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """``drop_path_rates`` over the whole network, cut into one list per stage."""
    rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
    return [[next(rates) for _ in range(depth)] for depth in depths]


def make_drop_path(rate: float) -> DropPath | None:
    return DropPath(rate) if rate > 0 else None


class ConvClassifier(nn.Conv2d):
    """A linear classifier whose weight is stored as a 1x1 convolution (out, in, 1, 1), as
    timm's pre-activation ResNets keep ``head.fc``. It takes pooled features (N, C) like
    ``nn.Linear`` and has the same default initialisation."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, kernel_size=1, bias=True)

    @property
    def in_features(self) -> int:
        return self.in_channels

    @property
    def out_features(self) -> int:
        return self.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return super().forward(x[:, :, None, None]).flatten(1)
        return super().forward(x)
