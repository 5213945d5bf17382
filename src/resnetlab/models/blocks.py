"""Residual blocks and shortcuts shared by every post-activation ResNet in the zoo.

Attribute names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3``, ``downsample``)
are torchvision's, so torchvision state_dicts load into these blocks unchanged; the optional
squeeze-excitation module is timm's ``se`` (no keys when absent).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import ConfigError
from .layers import create_attn, make_drop_path

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1):
    """3x3 convolution with padding that keeps the spatial size at stride 1."""
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        groups=groups,
        bias=False,
        dilation=dilation,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Parameter-free shortcut (He et al. 2016, option A): subsample, then zero-pad channels.

    Used by the CIFAR family where the paper keeps the network exactly the size of its plain
    twin: "we use identity shortcuts in all cases (option A)" (arXiv:1512.03385, sec. 4.2).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ConfigError(
                f"option-A shortcut cannot shrink channels ({in_planes}->{out_planes})"
            )
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            front = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, front, self.extra - front))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.extra}"


def projection_shortcut(
    in_planes: int,
    out_planes: int,
    stride: int,
    norm_layer: NormLayer | None,
    avg_down: bool = False,
) -> nn.Sequential:
    """1x1 projection + norm (option B). ``avg_down`` pools first, as in ResNet-D.
    ``norm_layer=None``: the conv alone (``downsample.0``), for pre-activation units, whose
    shortcut reads an input that is already normalised.

    ResNet-D ("Bag of Tricks", arXiv:1812.01187, sec. 4.2): a strided 1x1 conv ignores 3/4 of
    the input, so average-pool to downsample and keep the 1x1 conv at stride 1. The pooling
    slot stays at index 0 (an identity at stride 1), so the conv and norm are always
    ``downsample.1`` / ``downsample.2``, as in timm's ResNet-D weights.
    """
    if avg_down:
        pool = (
            nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            if stride > 1
            else nn.Identity()
        )
        return nn.Sequential(pool, conv1x1(in_planes, out_planes), norm_layer(out_planes))
    if norm_layer is None:
        return nn.Sequential(conv1x1(in_planes, out_planes, stride))
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))


# The CIFAR families' shortcuts where the shape changes (He et al. 2016, sec. 4.2): "A" zero-pads
# (no parameters), "B" projects with a 1x1 conv.
SHORTCUTS = ("A", "B")


def check_shortcut(shortcut) -> str:
    """``shortcut`` as one of SHORTCUTS (either case accepted)."""
    if not isinstance(shortcut, str) or shortcut.upper() not in SHORTCUTS:
        raise ConfigError(f"shortcut={shortcut!r} is not one of {', '.join(SHORTCUTS)}")
    return shortcut.upper()


def option_shortcut(kind: str, norm_layer: NormLayer | None) -> Callable[..., nn.Module]:
    """``shortcut(in, out, stride)`` for option ``kind`` (see ``projection_shortcut`` for
    ``norm_layer``)."""
    if kind == "A":
        return PadShortcut
    return partial(projection_shortcut, norm_layer=norm_layer)


class ResidualBlock(nn.Module):
    """What every residual block shares: its shortcut settings and how the branch meets the
    shortcut. Subclasses build the branch and name its last scaling layer (``last_norm``)."""

    def _set_shortcut(
        self, downsample: nn.Module | None, stride: int, residual: bool, drop_path: float
    ) -> None:
        # Assigning a submodule that is already set keeps its place (and its state_dict keys).
        self.downsample = downsample
        self.stride = stride
        self.residual = residual
        self.drop_path = make_drop_path(drop_path)

    def _add_shortcut(
        self, out: torch.Tensor, x: torch.Tensor, projected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stochastic depth on the branch ``out``, then the addition: ``x`` itself, or the
        ``downsample`` of ``projected`` (default ``x``). A plain net returns the branch."""
        if self.drop_path is not None:
            out = self.drop_path(out)
        if not self.residual:
            return out
        if self.downsample is None:
            return out + x
        return out + self.downsample(x if projected is None else projected)

    def _add_shortcut_relu(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The end of a post-activation block (one that sets ``se`` and ``relu``):
        squeeze-excitation, the addition, and the ReLU after it (never on the branch before
        it)."""
        if self.se is not None:
            out = self.se(out)
        return self.relu(self._add_shortcut(out, x))


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions; ReLU only after the addition (never on the branch before it)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        residual: bool = True,
        stride_in_1x1: bool = False,
        attn_layer: str | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ConfigError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.se = create_attn(attn_layer, planes)
        self._set_shortcut(downsample, stride, residual, drop_path)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self._add_shortcut_relu(out, x)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand.

    The stride sits on the 3x3 conv by default ("ResNet v1.5", as torchvision does; about
    +0.5 % top-1 over v1). ``stride_in_1x1=True`` restores the original paper's placement.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        residual: bool = True,
        stride_in_1x1: bool = False,
        attn_layer: str | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.se = create_attn(attn_layer, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self._set_shortcut(downsample, stride, residual, drop_path)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._add_shortcut_relu(out, x)
