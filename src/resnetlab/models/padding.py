"""TensorFlow/Keras/MindSpore "same" padding for strided layers.

PyTorch pads a k x k layer by k // 2 on every side. TF-style "same" padding instead pads just
enough that the output is ceil(input / stride), and puts the odd pixel after: for an even
input at stride 2 that is 2 before / 3 after for the 7x7 stem, 0 before / 1 after for a 3x3
conv or max-pool. Weights trained that way (TF-slim, MindSpore ``pad_mode="same"``) only give
their outputs when the model pads the same way, so ``pad_mode="same"`` swaps every strided
conv and max-pool for one that pads per input size, as timm does for its TF ports. Layers at
stride 1 keep PyTorch's symmetric padding, which is what "same" means for odd kernels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import ConfigError

PAD_MODES = ("symmetric", "same")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding that makes a ``kernel`` at ``stride`` produce
    ceil(size / stride) outputs, the extra pixel after (TensorFlow's rule)."""
    out = (size + stride - 1) // stride  # ceil in integers: symbolic sizes trace through
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride, dilation, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF "same" padding computed from each input's size (same state_dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.weight, self.bias)


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TF "same" padding; padded positions never win the max."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pair = nn.modules.utils._pair
        x = _pad_same(
            x, pair(self.kernel_size), pair(self.stride), pair(self.dilation), value=-math.inf
        )
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)


def _same_conv(m: nn.Conv2d) -> Conv2dSame:
    new = Conv2dSame(
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        m.stride,
        padding=0,
        dilation=m.dilation,
        groups=m.groups,
        bias=m.bias is not None,
        device=m.weight.device,
        dtype=m.weight.dtype,
    )
    new.weight, new.bias = m.weight, m.bias  # keep the parameters (and any init) as they are
    return new


def _needs_same(m: nn.Module) -> bool:
    stride = nn.modules.utils._pair(m.stride)
    kernel = nn.modules.utils._pair(m.kernel_size)
    return max(stride) > 1 and max(kernel) > 1


def apply_pad_mode(model: nn.Module, pad_mode: str) -> nn.Module:
    """Give ``model`` ``pad_mode`` padding in place: ``"symmetric"`` (PyTorch, unchanged) or
    ``"same"`` (TF/Keras/MindSpore). State_dict keys and shapes do not change."""
    if pad_mode not in PAD_MODES:
        raise ConfigError(f"pad_mode={pad_mode!r} is not one of {', '.join(PAD_MODES)}")
    if pad_mode == "symmetric":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and _needs_same(child):
                setattr(parent, name, _same_conv(child))
            elif type(child) is nn.MaxPool2d and _needs_same(child):
                setattr(
                    parent,
                    name,
                    MaxPool2dSame(
                        child.kernel_size,
                        child.stride,
                        0,
                        child.dilation,
                        ceil_mode=child.ceil_mode,
                    ),
                )
    return model
