"""Weight initialisation schemes shared by every model in the zoo."""

from __future__ import annotations

from torch import nn

from ..core.errors import ConfigError
from .layers import ConvClassifier

INIT_SCHEMES = ("kaiming", "normal")
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm, nn.LayerNorm)


def init_weights(model: nn.Module, scheme: str = "kaiming") -> None:
    """Initialise convolutions, norms and the classifier in place.

    ``kaiming``: He-normal convs (fan_out, ReLU gain; arXiv:1502.01852), norm gamma 1, beta 0,
    the classifier keeps PyTorch's default uniform init (as torchvision does).
    ``normal``: conv and classifier weights N(0, 0.02), norm gamma ~ N(1, 0.02), beta 0, the
    scheme of the MindSpore ResNet tutorial.
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"init={scheme!r} is not one of {', '.join(INIT_SCHEMES)}")
    if any(p.is_meta for p in model.parameters()):
        return  # built on the meta device for its shapes: there are no values to set
    for m in model.modules():
        if isinstance(m, ConvClassifier):  # a linear layer in a conv's shape: init it as one
            if scheme == "normal":
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _NORMS) and m.weight is not None:
            if scheme == "kaiming":
                nn.init.ones_(m.weight)
            else:
                nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and scheme == "normal":
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


def zero_init_last_norm(model: nn.Module) -> None:
    """Zero the last scaling layer of every residual branch, so each block starts as identity:
    gamma of the last norm (Goyal et al., arXiv:1706.02677, sec. 5.1; about +0.2-0.3 % top-1
    on ImageNet), or the last conv's weight where a pre-activation branch ends in a conv (as
    timm's ``zero_init_last`` does). Blocks name that layer with ``last_norm()``.
    """
    for m in model.modules():
        last_norm = getattr(m, "last_norm", None)
        if callable(last_norm):
            norm = last_norm()
            if getattr(norm, "weight", None) is not None:
                nn.init.zeros_(norm.weight)
