"""The CIFAR ResNet family of He et al. 2016, sec. 4.2 (arXiv:1512.03385).

A 3x3 stem with 16 channels, then three stages of n basic blocks at 16/32/64 channels on
32x32/16x16/8x8 maps: 6n+2 weighted layers. The paper uses option-A shortcuts everywhere, so a
residual net has exactly the parameters of its plain twin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ..core.errors import ConfigError
from .base import (
    ClassifierNet,
    check_int,
    check_residual_args,
    check_stage_list,
    make_stage,
    resolve_norm_layer,
)
from .blocks import BasicBlock, check_shortcut, conv3x3, option_shortcut
from .layers import stage_drop_path_rates


def check_cifar_args(in_chans, shortcut, widths: Sequence[int]) -> str:
    """The arguments both CIFAR families take; returns ``shortcut`` as one of SHORTCUTS."""
    check_int("in_chans", in_chans, 1)
    shortcut = check_shortcut(shortcut)
    check_stage_list("widths", widths, 3, "widths")
    return shortcut


def make_cifar_stages(
    net: nn.Module,
    block: Callable[..., nn.Module],
    widths: Sequence[int],
    expansion: int,
    n: int,
    shortcut: Callable[[int, int, int], nn.Module] | None,
    drop_path_rate: float,
) -> int:
    """Three stages of ``n`` blocks at ``widths`` (strides 1, 2, 2: 32x32, 16x16, 8x8 maps for
    a 32x32 input), set on ``net`` as ``layer1``..``layer3``; ``block`` is called with
    ``planes`` and ``make_stage``'s keywords. Returns the last stage's output channels."""
    inplanes = widths[0]
    rates = stage_drop_path_rates(drop_path_rate, (n, n, n))
    for i, (planes, stride, stage_rates) in enumerate(zip(widths, (1, 2, 2), rates), start=1):
        out = planes * expansion
        stage = make_stage(
            partial(block, planes=planes), inplanes, out, stride, stage_rates, shortcut
        )
        setattr(net, f"layer{i}", nn.Sequential(*stage))
        inplanes = out
    return inplanes


class CifarResNet(ClassifierNet):
    """6n+2-layer ResNet for small images (CIFAR, MNIST, digits)."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        widths: Sequence[int] = (16, 32, 64),
        zero_init_residual: bool = False,
        norm_layer=None,
        residual: bool = True,
        init: str = "kaiming",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pad_mode: str = "symmetric",
    ) -> None:
        super().__init__()
        check_int("depth", depth, 8)
        if (depth - 2) % 6:
            raise ConfigError(f"depth must be 6n+2 (20, 32, 44, 56, 110, 1202, ...), got {depth}")
        self.shortcut = check_cifar_args(in_chans, shortcut, widths)
        check_residual_args(residual, zero_init_residual, drop_path_rate)
        norm = resolve_norm_layer(norm_layer)
        self.depth = depth
        self.in_chans = in_chans
        self.residual = residual
        n = (depth - 2) // 6

        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = norm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        block = partial(BasicBlock, norm_layer=norm, residual=residual)
        shortcut_fn = option_shortcut(self.shortcut, norm) if residual else None
        self.num_features = make_cifar_stages(
            self, block, widths, 1, n, shortcut_fn, drop_path_rate
        )
        self._make_head(num_classes, drop_rate)
        self._init_weights(pad_mode, init, zero_init_residual)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]
