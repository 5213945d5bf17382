"""The CIFAR ResNet family of He et al. 2016, sec. 4.2 (arXiv:1512.03385).

A 3x3 stem with 16 channels, then three stages of n basic blocks at 16/32/64 channels on
32x32/16x16/8x8 maps: 6n+2 weighted layers. The paper uses option-A shortcuts everywhere, so a
residual net has exactly the parameters of its plain twin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import ClassifierNet, check_bool, check_int, resolve_norm_layer
from .blocks import BasicBlock, PadShortcut, conv3x3, projection_shortcut
from .init import init_weights, zero_init_last_norm
from .layers import drop_path_rates
from .padding import apply_pad_mode

SHORTCUTS = ("A", "B")


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
        check_int("in_chans", in_chans, 1)
        if not isinstance(shortcut, str) or shortcut.upper() not in SHORTCUTS:
            raise ConfigError(f"shortcut={shortcut!r} is not one of {', '.join(SHORTCUTS)}")
        if len(widths) != 3:
            raise ConfigError(f"widths must list 3 stage widths, got {list(widths)}")
        for w in widths:
            check_int("each entry of widths", w, 1)
        check_bool("residual", residual)
        check_bool("zero_init_residual", zero_init_residual)
        if zero_init_residual and not residual:
            raise ConfigError(
                "zero_init_residual=True would zero every plain block; use residual=True"
            )
        if drop_path_rate and not residual:
            raise ConfigError("drop_path_rate drops residual branches; plain nets have none")
        norm = resolve_norm_layer(norm_layer)
        self.depth = depth
        self.in_chans = in_chans
        self.shortcut = shortcut.upper()
        self.residual = residual
        n = (depth - 2) // 6
        rates = iter(drop_path_rates(drop_path_rate, 3 * n))

        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = norm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                downsample = None
                if residual and (s != 1 or inplanes != planes):
                    if self.shortcut == "A":
                        downsample = PadShortcut(inplanes, planes, s)
                    else:
                        downsample = projection_shortcut(inplanes, planes, s, norm)
                blocks.append(
                    BasicBlock(
                        inplanes,
                        planes,
                        s,
                        downsample,
                        norm_layer=norm,
                        residual=residual,
                        drop_path=next(rates),
                    )
                )
                inplanes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.num_features = inplanes
        self._make_head(num_classes, drop_rate)

        apply_pad_mode(self, pad_mode)
        init_weights(self, init)
        if zero_init_residual:
            zero_init_last_norm(self)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]
