"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks",
arXiv:1603.05027): each residual unit is BN-ReLU-conv repeated (fig. 4e), nothing follows
the addition, so the identity path runs untouched from the stem to a final BN-ReLU.

``PreActBlock`` serves both families. ``PreActResNet`` is the ImageNet family with timm's
``resnetv2_*`` module names (``stem.conv``, ``stages.N.blocks.M.norm1``, ``downsample.conv``,
``norm``, ``head.fc`` as a 1x1 conv), so timm's pre-activation weights load strictly; the
CIFAR family is in ``preact_cifar.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
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
from .blocks import NormLayer, ResidualBlock, conv1x1, conv3x3
from .layers import ConvClassifier, stage_drop_path_rates

PREACT_BLOCKS = ("basic", "bottleneck")


class PreActBlock(ResidualBlock):
    """Full pre-activation unit: (norm-ReLU-conv) x 2 (basic) or x 3 (bottleneck).

    The first norm-ReLU is shared: a projection ``downsample`` reads the pre-activated input,
    as the paper's code does for units that change shape ("common BN, ReLU",
    KaimingHe/resnet-1k-layers); a parameter-free shortcut (option A) reads the raw input.
    ``norm_name`` is ``"bn"`` (torchvision-style keys) or ``"norm"`` (timm's).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        bottleneck: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        residual: bool = True,
        stride_in_1x1: bool = False,
        drop_path: float = 0.0,
        norm_name: str = "bn",
        shortcut_preact: bool = True,
    ) -> None:
        super().__init__()
        self.expansion = 4 if bottleneck else 1
        out = planes * self.expansion
        if bottleneck:
            s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
            convs = [
                conv1x1(inplanes, planes, s1),
                conv3x3(planes, planes, s3),
                conv1x1(planes, out),
            ]
        else:
            convs = [conv3x3(inplanes, planes, stride), conv3x3(planes, planes)]
        # First, as timm registers it: the same key order (``_set_shortcut`` keeps its place).
        self.downsample = downsample
        self.layer_names = []
        for i, conv in enumerate(convs, start=1):
            setattr(self, f"{norm_name}{i}", norm_layer(conv.in_channels))
            setattr(self, f"conv{i}", conv)
            self.layer_names.append((f"{norm_name}{i}", f"conv{i}"))
        self.relu = nn.ReLU(inplace=True)
        self.shortcut_preact = shortcut_preact
        self._set_shortcut(downsample, stride, residual, drop_path)

    def last_norm(self) -> nn.Module:
        """The branch's last scaling layer: its last conv (no norm follows it)."""
        return getattr(self, self.layer_names[-1][1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, conv = self.layer_names[0]
        pre = self.relu(getattr(self, norm)(x))
        out = getattr(self, conv)(pre)
        for norm, conv in self.layer_names[1:]:
            out = getattr(self, conv)(self.relu(getattr(self, norm)(out)))
        return self._add_shortcut(out, x, pre if self.shortcut_preact else x)


class PreActStage(nn.Module):
    """A stage of blocks, under the ``blocks`` name timm's state_dicts use."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def check_preact_args(block: str, residual, zero_init_residual, drop_path_rate) -> None:
    if block not in PREACT_BLOCKS:
        raise ConfigError(f"block={block!r} is not one of {', '.join(PREACT_BLOCKS)}")
    check_residual_args(residual, zero_init_residual, drop_path_rate)


class PreActNet(ClassifierNet):
    """What both pre-activation families share: nothing follows a unit's addition, so the
    last stage's output passes a final norm (``final_norm``) and ReLU before the pool."""

    final_norm = "norm"

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.get_submodule(self.final_norm)
        return self.relu(norm(super().forward_feature_map(x)))

    def tail_modules(self) -> list[nn.Module]:
        return [self.get_submodule(self.final_norm)]


def _conv_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """timm's pre-activation projection: a 1x1 conv alone, at ``downsample.conv``."""
    return nn.Sequential(OrderedDict(conv=conv1x1(in_planes, out_planes, stride)))


class PreActResNet(PreActNet):
    """ImageNet pre-activation ResNet (timm's ``resnetv2_{18,34,50,101,152}``): 7x7 stem and
    max-pool with no norm (the first unit pre-activates), four stages, final BN-ReLU, head.
    Bottleneck units stride on the 3x3 conv, as timm's do."""

    stage_names = ("stages.0", "stages.1", "stages.2", "stages.3")
    first_conv = "stem.conv"
    classifier_name = "head.fc"

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
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
        check_stage_list("layers", layers, 4, "depths")
        check_int("in_chans", in_chans, 1)
        norm = resolve_norm_layer(norm_layer)
        self.in_chans = in_chans
        self.residual = residual
        bottleneck = block == "bottleneck"
        expansion = 4 if bottleneck else 1

        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False),
                pool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        stage_rates = stage_drop_path_rates(drop_path_rate, layers)
        shortcut = _conv_shortcut if residual else None
        inplanes, stages = 64, []
        for i, (planes, rates) in enumerate(zip((64, 128, 256, 512), stage_rates)):
            block_fn = partial(
                PreActBlock,
                planes=planes,
                bottleneck=bottleneck,
                norm_layer=norm,
                residual=residual,
                norm_name="norm",
            )
            out = planes * expansion
            stages.append(
                PreActStage(make_stage(block_fn, inplanes, out, 2 if i else 1, rates, shortcut))
            )
            inplanes = out
        self.stages = nn.Sequential(*stages)
        self.num_features = inplanes
        self.norm = norm(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Module()
        self._make_head(num_classes, drop_rate)
        self._init_weights(pad_mode, init, zero_init_residual)

    def _new_classifier(self, num_classes: int) -> nn.Module:
        return ConvClassifier(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def stem_modules(self) -> list[nn.Module]:
        return [self.stem]
