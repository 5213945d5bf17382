"""What every network in the zoo shares: classifier head, feature API, argument checks."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core.errors import ConfigError
from .init import init_weights, zero_init_last_norm
from .padding import apply_pad_mode

NORM_LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "syncbatchnorm": nn.SyncBatchNorm,
    # 32 groups as in Wu & He (arXiv:1803.08494); fewer when a layer has fewer channels.
    "groupnorm": lambda c: nn.GroupNorm(min(32, c), c),
}


def resolve_norm_layer(norm_layer) -> Callable[[int], nn.Module]:
    """Accept None, a name from NORM_LAYERS, or a callable ``f(num_channels) -> Module``."""
    if norm_layer is None:
        return nn.BatchNorm2d
    if isinstance(norm_layer, str):
        try:
            return NORM_LAYERS[norm_layer.lower()]
        except KeyError:
            raise ConfigError(
                f"norm_layer={norm_layer!r} is unknown; use one of {', '.join(NORM_LAYERS)} "
                "or a callable taking the channel count"
            ) from None
    if not callable(norm_layer):
        raise ConfigError(
            f"norm_layer must be a name or a callable, got {type(norm_layer).__name__}"
        )
    return norm_layer


# ImageNet's statistics: the normalisation of a model until it is trained on data of its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_pct_for(size: int, resize_size: int) -> float:
    """timm's ``crop_pct`` for a center ``size`` crop of an image whose shorter side was
    resized to ``resize_size``: timm resizes to ``floor(size / crop_pct)``, which must come
    back to ``resize_size`` whatever the rounding of the division."""
    pct = size / resize_size
    while math.floor(size / pct) < resize_size:  # 64 / (64 / 67) = 66.999...
        pct = math.nextafter(pct, 0.0)
    return pct


def make_pretrained_cfg(
    input_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    resize_size: int | None = None,
    num_classes: int | None = None,
    first_conv: str = "conv1",
    classifier: str = "fc",
    **extra,
) -> dict:
    """timm's ``pretrained_cfg`` for a model fed as resnetlab feeds it, so that
    ``timm.data.resolve_model_data_config(model)`` gives its size, mean/std, interpolation and
    crop: ``resize_size`` given, the shorter side resized to it and the center cropped (the
    ImageNet evaluation); None, both sides resized to the input size (timm's ``squash``)."""
    c, h, w = (int(v) for v in input_size)
    cfg = {
        "input_size": (c, h, w),
        "interpolation": interpolation,
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "crop_pct": crop_pct_for(h, resize_size) if resize_size else 1.0,
        "crop_mode": "center" if resize_size else "squash",
        "first_conv": first_conv,
        "classifier": classifier,
    }
    if num_classes is not None:
        cfg["num_classes"] = int(num_classes)
    return {**cfg, **extra}


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def check_residual_args(residual, zero_init_residual, drop_path_rate) -> None:
    """The residual options every family takes, and the combinations a plain net refuses."""
    check_bool("residual", residual)
    check_bool("zero_init_residual", zero_init_residual)
    if zero_init_residual and not residual:
        raise ConfigError("zero_init_residual=True would zero every plain block; use residual=True")
    if drop_path_rate and not residual:
        raise ConfigError("drop_path_rate drops residual branches; plain nets have none")


def check_stage_list(name: str, values: Sequence[int], count: int, what: str) -> None:
    """``values`` has one positive integer per stage (depths or widths)."""
    if len(values) != count:
        raise ConfigError(f"{name} must list {count} stage {what}, got {list(values)}")
    for value in values:
        check_int(f"each entry of {name}", value, 1)


def make_stage(
    block: Callable[..., nn.Module],
    inplanes: int,
    out_planes: int,
    stride: int,
    drop_path: Sequence[float],
    shortcut: Callable[[int, int, int], nn.Module] | None,
    **first,
) -> list[nn.Module]:
    """One stage's blocks, one per rate in ``drop_path``: the first takes the stride and, where
    the shape changes and there is a ``shortcut(in, out, stride)`` (None: a plain net), the
    projection built here (before the block, so construction order is unchanged); the others
    keep the shape. ``block`` is called with keywords ``inplanes``, ``stride``, ``downsample``
    and ``drop_path``; ``first`` adds keywords for the first block only (a dilated stage's
    first block keeps the previous dilation)."""
    downsample = None
    if shortcut is not None and (stride != 1 or inplanes != out_planes):
        downsample = shortcut(inplanes, out_planes, stride)
    blocks = [
        block(
            inplanes=inplanes, stride=stride, downsample=downsample, drop_path=drop_path[0], **first
        )
    ]
    for rate in drop_path[1:]:
        blocks.append(block(inplanes=out_planes, stride=1, downsample=None, drop_path=rate))
    return blocks


class ClassifierNet(nn.Module, ABC):
    """Stem + stages + global average pool + linear head.

    Subclasses build the modules named in ``stage_names`` (dotted paths, in order), the
    classifier at ``classifier_name`` (through ``_make_head``) and set ``num_features``. The
    pool is adaptive, so any input of at least 32x32 works. ``first_conv`` and
    ``classifier_name`` say where the input conv and the classifier live, as timm's
    ``pretrained_cfg`` does, so weight loaders need not guess the key names.
    """

    stage_names: tuple[str, ...] = ()
    first_conv: str = "conv1"
    classifier_name: str = "fc"
    num_features: int

    def _make_head(self, num_classes: int, drop_rate: float) -> None:
        self.num_classes = check_int("num_classes", num_classes, 0)
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.drop_rate = float(drop_rate)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(self.drop_rate) if self.drop_rate > 0 else nn.Identity()
        self._set_classifier(self._new_classifier(num_classes))

    def _init_weights(self, pad_mode: str, init: str, zero_init_residual: bool) -> None:
        """Last step of every constructor, once all modules exist: padding, then weights."""
        apply_pad_mode(self, pad_mode)
        init_weights(self, init)
        if zero_init_residual:
            zero_init_last_norm(self)

    def _new_classifier(self, num_classes: int) -> nn.Module:
        """A fresh classifier for ``num_classes`` outputs (0: none, features pass through)."""
        return nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def _set_classifier(self, module: nn.Module) -> None:
        parent, _, name = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, name, module)

    @abstractmethod
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input to the first stage's input."""

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last stage (and of any final norm), before pooling (N, C, h, w)."""
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = self.get_submodule(name)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's contract: the feature map of the last stage, before pooling
        (N, num_features, h, w); ``forward_pooled`` gives the pooled vector."""
        return self.forward_feature_map(x)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier (N, num_features): what
        ``forward_features`` returned before it followed timm (an image's embedding)."""
        return torch.flatten(self.avgpool(self.forward_feature_map(x)), 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's contract: the feature map of ``forward_features`` (N, C, h, w), pooled,
        through dropout and the classifier; ``pre_logits=True`` stops before the classifier
        (N, num_features). Already pooled features (N, C) are taken as they are."""
        if x.ndim == 4:
            x = torch.flatten(self.avgpool(x), 1)
        x = self.dropout(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Straight through, without forward_head's test of the input's shape: FX (BatchNorm
        # folding for inference) and the exporters trace this.
        x = torch.flatten(self.avgpool(self.forward_feature_map(x)), 1)
        return self.get_classifier()(self.dropout(x))

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` (0: no head)."""
        self.num_classes = check_int("num_classes", num_classes, 0)
        device = next(self.parameters()).device
        self._set_classifier(self._new_classifier(num_classes).to(device))

    @abstractmethod
    def stem_modules(self) -> list[nn.Module]:
        """The modules of the stem, for freezing."""

    def tail_modules(self) -> list[nn.Module]:
        """Modules between the last stage and the pool (a pre-activation net's final norm);
        they belong to the last stage's parameter group."""
        return []

    def parameter_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """Modules in input-to-output order: stem, each stage, head (for freezing and
        discriminative learning rates). Every parameter is in exactly one group."""
        groups = [("stem", self.stem_modules())]
        groups += [(name, [self.get_submodule(name)]) for name in self.stage_names]
        groups[-1][1].extend(self.tail_modules())
        groups.append(("head", [self.get_classifier()]))
        return groups
