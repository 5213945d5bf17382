"""The CIFAR pre-activation ResNets of He et al. 2016 (arXiv:1603.05027, sec. 4 and
appendix): a 3x3 conv with 16 channels (no norm: the first unit pre-activates), three stages,
a final BN-ReLU, average pool, linear head.

Basic units make 6n+2 layers at 16/32/64 channels (ResNet-110 is n=18); bottleneck units make
9n+2 layers at 64/128/256 output channels (ResNet-164 is n=18, ResNet-1001 is n=111), as in
the paper's code (KaimingHe/resnet-1k-layers). Neither timm nor torchvision has these nets,
so the keys are torchvision-style: ``conv1``, ``layerN.M.bn1/conv1/...``, ``downsample.0``,
a final ``bn`` and ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import ClassifierNet, check_bool, check_int, resolve_norm_layer
from .blocks import PadShortcut, conv1x1, conv3x3
from .init import init_weights, zero_init_last_norm
from .layers import drop_path_rates
from .padding import apply_pad_mode
from .preact import PreActBlock, check_preact_args

SHORTCUTS = ("A", "B")


class PreActCifarResNet(ClassifierNet):
    """Pre-activation ResNet for small images. ``shortcut="B"`` (default) projects with a 1x1
    conv where the shape changes, as the paper's code does; ``"A"`` zero-pads instead.
    ``stride_in_1x1=True`` (default) strides bottlenecks on their first 1x1 conv, also as the
    paper's code does."""

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int = 110,
        block: str = "basic",
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "B",
        widths: Sequence[int] = (16, 32, 64),
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
        norm_layer=None,
        residual: bool = True,
        init: str = "kaiming",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pad_mode: str = "symmetric",
    ) -> None:
        super().__init__()
        check_preact_args(block, residual, zero_init_residual, drop_path_rate)
        bottleneck = block == "bottleneck"
        per_block, rule = (3, "9n+2 (164, 1001, ...)") if bottleneck else (2, "6n+2 (20, 110, ...)")
        check_int("depth", depth, 3 * per_block + 2)
        if (depth - 2) % (3 * per_block):
            raise ConfigError(f"depth of a {block} net must be {rule}, got {depth}")
        check_int("in_chans", in_chans, 1)
        check_bool("stride_in_1x1", stride_in_1x1)
        if not isinstance(shortcut, str) or shortcut.upper() not in SHORTCUTS:
            raise ConfigError(f"shortcut={shortcut!r} is not one of {', '.join(SHORTCUTS)}")
        if len(widths) != 3:
            raise ConfigError(f"widths must list 3 stage widths, got {list(widths)}")
        for w in widths:
            check_int("each entry of widths", w, 1)
        norm = resolve_norm_layer(norm_layer)
        self.depth = depth
        self.in_chans = in_chans
        self.shortcut = shortcut.upper()
        self.residual = residual
        n = (depth - 2) // (3 * per_block)
        expansion = 4 if bottleneck else 1

        self.conv1 = conv3x3(in_chans, widths[0])
        rates = iter(drop_path_rates(drop_path_rate, 3 * n))
        inplanes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                out = planes * expansion
                downsample = None
                if residual and (s != 1 or inplanes != out):
                    if self.shortcut == "A":
                        downsample = PadShortcut(inplanes, out, s)
                    else:
                        downsample = nn.Sequential(conv1x1(inplanes, out, s))
                blocks.append(
                    PreActBlock(
                        inplanes,
                        planes,
                        s,
                        downsample,
                        bottleneck=bottleneck,
                        norm_layer=norm,
                        residual=residual,
                        stride_in_1x1=stride_in_1x1,
                        drop_path=next(rates),
                        shortcut_preact=self.shortcut == "B",
                    )
                )
                inplanes = out
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.num_features = inplanes
        self.bn = norm(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self._make_head(num_classes, drop_rate)

        apply_pad_mode(self, pad_mode)
        init_weights(self, init)
        if zero_init_residual:
            zero_init_last_norm(self)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(super().forward_feature_map(x)))

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1]

    def tail_modules(self) -> list[nn.Module]:
        return [self.bn]
