"""Model registry: every network is one named entry over one of the family builders.

An entry fixes the architecture-defining arguments (block, depths, widths); everything else is
a keyword argument the user may set, checked here so a typo is an error and never ignored.
The entries themselves are in ``zoo.py``.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from dataclasses import dataclass, field

from torch import nn

from ..core.errors import ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, make_pretrained_cfg
from .zoo_stats import ZOO_STATS

__all__ = [
    "FAMILIES",
    "TAGS",
    "ZOO_STATS",
    "ModelEntry",
    "create_model",
    "get_model_entry",
    "list_families",
    "list_models",
    "model_for_timm_name",
    "natural_key",
    "register_model",
]

# The data set an entry is built for: its default input size and class count.
FAMILIES = ("imagenet", "cifar")
# Architecture families across both data sets; `list_models(family=...)` accepts these too.
TAGS = ("resnet", "resnext", "wide", "resnet-d", "se", "preact", "plain")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: type[nn.Module]
    family: str
    fixed: dict = field(default_factory=dict)
    description: str = ""
    # The paper's figures where the name comes from a paper table: params_m (M),
    # cifar10_error (%), optionally cifar100_error (%), and source (paper and table).
    paper: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    # timm's name for the same network with the same state_dict keys (None: timm has none).
    timm_name: str | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """Default (C, H, W): 224 for the ImageNet family, 32 for the CIFAR family."""
        return (3, 224, 224) if self.family == "imagenet" else (3, 32, 32)

    @property
    def total_stride(self) -> int:
        """How many times the network shrinks its input before pooling: the ImageNet stem
        (stride-2 conv, stride-2 pool) and three stride-2 stages make 32; the CIFAR family's
        two stride-2 stages make 4. Any input of at least 1x1 runs (padding keeps every map
        at least 1x1); below this size the last stage sees 1x1 maps."""
        return 32 if self.family == "imagenet" else 4

    @property
    def default_num_classes(self) -> int:
        return 1000 if self.family == "imagenet" else 10

    def allowed_kwargs(self) -> list[str]:
        params = inspect.signature(self.builder.__init__).parameters
        return sorted(p for p in params if p != "self" and p not in self.fixed)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    builder: type[nn.Module],
    family: str,
    description: str = "",
    paper: dict | None = None,
    tags: tuple[str, ...] = (),
    timm_name: str | None = None,
    **fixed,
) -> ModelEntry:
    """Add a named entry. A second entry with the same name is refused."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {FAMILIES}")
    unknown_tags = set(tags) - set(TAGS)
    if unknown_tags:
        raise ValueError(f"{name}: tags {sorted(unknown_tags)} are not among {TAGS}")
    if timm_name is not None and model_for_timm_name(timm_name) is not None:
        raise ValueError(f"timm's {timm_name!r} is already {model_for_timm_name(timm_name)!r}")
    entry = ModelEntry(
        name, builder, family, dict(fixed), description, dict(paper or {}), tuple(tags), timm_name
    )
    unknown = set(fixed) - set(inspect.signature(builder.__init__).parameters)
    if unknown:
        raise ValueError(f"{name}: {builder.__name__} takes no {sorted(unknown)}")
    _REGISTRY[name] = entry
    return entry


def list_families() -> tuple[str, ...]:
    """Every name ``list_models(family=...)`` accepts: the data-set families, then the tags."""
    return FAMILIES + TAGS


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Every registered name matching a shell-style ``pattern``, sorted with depths as numbers
    (resnet18 < resnet34 < resnet101). ``family`` is a data-set family (``imagenet``,
    ``cifar``) or an architecture tag (``preact``, ``se``, ...; see ``list_families()``)."""
    if family is not None and family not in list_families():
        raise ConfigError(f"family={family!r} is not one of {', '.join(list_families())}")
    return sorted(
        (
            n
            for n, e in _REGISTRY.items()
            if fnmatch.fnmatch(n, pattern) and (family is None or family in (e.family, *e.tags))
        ),
        key=natural_key,
    )


def model_for_timm_name(timm_name: str) -> str | None:
    """Our name for timm's model ``timm_name`` (a hub tag after a dot is ignored:
    ``resnetv2_50.a1h_in1k`` -> ``preact_resnet50``), or None when we have no twin."""
    base = timm_name.split(".", 1)[0]
    return next((n for n, e in _REGISTRY.items() if e.timm_name == base), None)


def natural_key(name: str) -> tuple:
    """Digits compare as numbers: ``resnet18`` before ``resnet101``."""
    return tuple((1, int(t), "") if t.isdigit() else (0, 0, t) for t in re.split(r"(\d+)", name))


def get_model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}{hint} (`resnetlab models` lists all {len(_REGISTRY)})"
        ) from None


def create_model(
    name: str, num_classes: int | None = None, in_chans: int = 3, **kwargs
) -> nn.Module:
    """Build a registered model.

    ``num_classes`` defaults to the family's data set (1000 for ImageNet, 10 for CIFAR).
    Unknown names and keyword arguments raise ``ValueError`` naming the close matches.
    """
    entry = get_model_entry(name)
    allowed = entry.allowed_kwargs()
    for key in kwargs:
        if key in entry.fixed:
            raise ConfigError(
                f"{name} fixes {key}={entry.fixed[key]!r}; pick another model name to change it"
            )
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"{name} does not accept {key!r}{hint}; it accepts: {', '.join(allowed)}"
            )
    if num_classes is None:
        num_classes = entry.default_num_classes
    model = entry.builder(**entry.fixed, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.model_name = name
    # timm's data config of a fresh model: ImageNet's evaluation at 224 (256 -> 224, bilinear),
    # the CIFAR family's plain resize to 32; a trained model gets its run's (bundle).
    size = entry.input_size[1]
    model.pretrained_cfg = make_pretrained_cfg(
        (in_chans, size, size),
        mean=IMAGENET_MEAN if in_chans == 3 else (sum(IMAGENET_MEAN) / 3,) * in_chans,
        std=IMAGENET_STD if in_chans == 3 else (sum(IMAGENET_STD) / 3,) * in_chans,
        resize_size=256 if entry.family == "imagenet" else None,
        num_classes=num_classes,
        first_conv=getattr(model, "first_conv", "conv1"),
        classifier=getattr(model, "classifier_name", "fc"),
        architecture=name,
    )
    return model
