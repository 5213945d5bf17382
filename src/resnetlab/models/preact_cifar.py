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
from functools import partial

import torch
from torch import nn

from ..core.errors import ConfigError
from .base import check_bool, check_int, resolve_norm_layer
from .blocks import conv3x3, option_shortcut
from .cifar import check_cifar_args, make_cifar_stages
from .preact import PreActBlock, PreActNet, check_preact_args


class PreActCifarResNet(PreActNet):
    """Pre-activation ResNet for small images. ``shortcut="B"`` (default) projects with a 1x1
    conv where the shape changes, as the paper's code does; ``"A"`` zero-pads instead.
    ``stride_in_1x1=True`` (default) strides bottlenecks on their first 1x1 conv, also as the
    paper's code does."""

    stage_names = ("layer1", "layer2", "layer3")
    final_norm = "bn"

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
        self.shortcut = check_cifar_args(in_chans, shortcut, widths)
        check_bool("stride_in_1x1", stride_in_1x1)
        norm = resolve_norm_layer(norm_layer)
        self.depth = depth
        self.in_chans = in_chans
        self.residual = residual
        n = (depth - 2) // (3 * per_block)

        self.conv1 = conv3x3(in_chans, widths[0])
        unit = partial(
            PreActBlock,
            bottleneck=bottleneck,
            norm_layer=norm,
            residual=residual,
            stride_in_1x1=stride_in_1x1,
            shortcut_preact=self.shortcut == "B",
        )
        # Option B projects the pre-activated input, so its 1x1 conv needs no norm of its own.
        shortcut_fn = option_shortcut(self.shortcut, None) if residual else None
        expansion = 4 if bottleneck else 1
        self.num_features = make_cifar_stages(
            self, unit, widths, expansion, n, shortcut_fn, drop_path_rate
        )
        self.bn = norm(self.num_features)
        self.relu = nn.ReLU(inplace=True)
        self._make_head(num_classes, drop_rate)
        self._init_weights(pad_mode, init, zero_init_residual)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1]
