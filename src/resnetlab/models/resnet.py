"""The ImageNet ResNet family (He et al. 2016, arXiv:1512.03385) and its descendants.

One builder, ``ResNet``; ResNeXt (arXiv:1611.05431) is ``groups`` + ``width_per_group``,
Wide ResNet (arXiv:1605.07146) is ``width_per_group``, ResNet-D (arXiv:1812.01187) is a deep
stem + average-pool downsampling, SE-ResNet (arXiv:1709.01507) is ``attn_layer="se"``. Module
names match torchvision's (and timm's, which keeps them "for weight compat"), so both libraries'
weights load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from ..core.errors import ConfigError
from .base import (
    ClassifierNet,
    check_bool,
    check_int,
    check_residual_args,
    check_stage_list,
    make_stage,
    resolve_norm_layer,
)
from .blocks import BasicBlock, Bottleneck, conv3x3, projection_shortcut
from .layers import check_attn_layer, stage_drop_path_rates

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEM_TYPES = ("", "deep", "deep_tiered")


class ResNet(ClassifierNet):
    """ImageNet-style ResNet: 7x7 (or deep 3x3) stem, max-pool, four stages, linear head."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        zero_init_residual: bool = False,
        norm_layer=None,
        residual: bool = True,
        stride_in_1x1: bool = False,
        stem_type: str = "",
        stem_width: int = 64,
        avg_down: bool = False,
        init: str = "kaiming",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_layer: str | None = None,
        pad_mode: str = "symmetric",
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"block={block!r} is not one of {', '.join(BLOCKS)}")
        block_cls = BLOCKS[block]
        check_stage_list("layers", layers, 4, "depths")
        check_int("in_chans", in_chans, 1)
        check_int("groups", groups, 1)
        check_int("width_per_group", width_per_group, 1)
        check_int("stem_width", stem_width, 1)
        check_residual_args(residual, zero_init_residual, drop_path_rate)
        check_bool("stride_in_1x1", stride_in_1x1)
        check_bool("avg_down", avg_down)
        if block_cls is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ConfigError("basic blocks support only groups=1 and width_per_group=64")
        if stem_type not in STEM_TYPES:
            raise ConfigError(f"stem_type={stem_type!r} is not one of {STEM_TYPES}")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        if len(replace_stride_with_dilation) != 3:
            raise ConfigError(
                "replace_stride_with_dilation must have 3 booleans (for layer2..layer4), "
                f"got {list(replace_stride_with_dilation)}"
            )
        check_attn_layer(attn_layer)
        norm = resolve_norm_layer(norm_layer)

        self.in_chans = in_chans
        self.residual = residual
        self._norm = norm
        self._block = block_cls
        self.groups = groups
        self.base_width = width_per_group
        self.dilation = 1
        self.stride_in_1x1 = stride_in_1x1
        self.avg_down = avg_down
        self.attn_layer = attn_layer
        self.first_conv = "conv1"
        stage_rates = stage_drop_path_rates(drop_path_rate, layers)

        if stem_type.startswith("deep"):
            # Three 3x3 convs replace the 7x7 (ResNet-C): same receptive field, cheaper, better.
            # "deep_tiered" (timm's ResNet-T) narrows the first to 3/4 of stem_width.
            first = 3 * (stem_width // 4) if stem_type == "deep_tiered" else stem_width
            self.conv1 = nn.Sequential(
                conv3x3(in_chans, first, stride=2),
                norm(first),
                nn.ReLU(inplace=True),
                conv3x3(first, stem_width),
                norm(stem_width),
                nn.ReLU(inplace=True),
                conv3x3(stem_width, 2 * stem_width),
            )
            self.inplanes = 2 * stem_width
            self.first_conv = "conv1.0"
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.inplanes = stem_width
        self.bn1 = norm(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = (False, *replace_stride_with_dilation)
        for i, planes in enumerate((64, 128, 256, 512)):
            stage = self._make_layer(planes, stage_rates[i], 2 if i else 1, dilate[i])
            setattr(self, f"layer{i + 1}", stage)
        self.num_features = 512 * block_cls.expansion
        self._make_head(num_classes, drop_rate)
        self._init_weights(pad_mode, init, zero_init_residual)

    def _make_layer(
        self, planes: int, drop_path: list[float], stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        """One stage: as many blocks as ``drop_path`` has rates (one per block)."""
        block = self._block
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        shortcut = None
        if self.residual:
            shortcut = partial(projection_shortcut, norm_layer=self._norm, avg_down=self.avg_down)
        unit = partial(
            block,
            planes=planes,
            groups=self.groups,
            base_width=self.base_width,
            dilation=self.dilation,
            norm_layer=self._norm,
            residual=self.residual,
            stride_in_1x1=self.stride_in_1x1,
            attn_layer=self.attn_layer,
        )
        out_planes = planes * block.expansion
        blocks = make_stage(
            unit, self.inplanes, out_planes, stride, drop_path, shortcut, dilation=previous_dilation
        )
        self.inplanes = out_planes
        return nn.Sequential(*blocks)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        if self.training and torch.is_grad_enabled():
            # ReLU and max-pooling commute (max(relu(a), relu(b)) == relu(max(a, b)), ties
            # included), so pooling first gives the same outputs and gradients while the ReLU
            # and its backward touch a quarter of the values. Evaluation and export keep the
            # conv-BN-ReLU-pool order that inference fusions and quantisers recognise.
            return self.relu(self.maxpool(x))
        return self.maxpool(self.relu(x))

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]
