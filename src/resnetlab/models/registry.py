"""Model registry: every network is one named entry over one of two builders.

An entry fixes the architecture-defining arguments (block, depths, widths); everything else is
a keyword argument the user may set, checked here so a typo is an error and never ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from .cifar import CifarResNet
from .resnet import ResNet

FAMILIES = ("imagenet", "cifar")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: type[nn.Module]
    family: str
    fixed: dict = field(default_factory=dict)
    description: str = ""
    # The paper's figures where the name comes from a paper table: params (M), error (%).
    paper: dict = field(default_factory=dict)

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
    **fixed,
) -> ModelEntry:
    """Add a named entry. A second entry with the same name is refused."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {FAMILIES}")
    entry = ModelEntry(name, builder, family, dict(fixed), description, dict(paper or {}))
    unknown = set(fixed) - set(inspect.signature(builder.__init__).parameters)
    if unknown:
        raise ValueError(f"{name}: {builder.__name__} takes no {sorted(unknown)}")
    _REGISTRY[name] = entry
    return entry


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Every registered name matching a shell-style ``pattern``, sorted with depths as numbers
    (resnet18 < resnet34 < resnet101)."""
    return sorted(
        (
            n
            for n, e in _REGISTRY.items()
            if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
        ),
        key=natural_key,
    )


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
    return model


def _register_zoo() -> None:
    basic, bottleneck = "basic", "bottleneck"
    imagenet = [
        ("resnet18", basic, (2, 2, 2, 2), {}, "ResNet-18"),
        ("resnet34", basic, (3, 4, 6, 3), {}, "ResNet-34"),
        ("resnet50", bottleneck, (3, 4, 6, 3), {}, "ResNet-50 (v1.5)"),
        ("resnet101", bottleneck, (3, 4, 23, 3), {}, "ResNet-101 (v1.5)"),
        ("resnet152", bottleneck, (3, 8, 36, 3), {}, "ResNet-152 (v1.5)"),
        ("resnext50_32x4d", bottleneck, (3, 4, 6, 3), dict(groups=32, width_per_group=4), ""),
        ("resnext101_32x8d", bottleneck, (3, 4, 23, 3), dict(groups=32, width_per_group=8), ""),
        ("resnext101_64x4d", bottleneck, (3, 4, 23, 3), dict(groups=64, width_per_group=4), ""),
        ("wide_resnet50_2", bottleneck, (3, 4, 6, 3), dict(width_per_group=128), ""),
        ("wide_resnet101_2", bottleneck, (3, 4, 23, 3), dict(width_per_group=128), ""),
        (
            "resnet50d",
            bottleneck,
            (3, 4, 6, 3),
            dict(stem_type="deep", stem_width=32, avg_down=True),
            "ResNet-50-D: deep stem, average-pool downsample (Bag of Tricks)",
        ),
    ]
    for name, block, layers, extra, desc in imagenet:
        register_model(name, ResNet, "imagenet", desc or name, block=block, layers=layers, **extra)
    register_model("plain18", ResNet, "imagenet", "plain twin of resnet18", block=basic,
                   layers=(2, 2, 2, 2), residual=False)  # fmt: skip
    register_model("plain34", ResNet, "imagenet", "plain twin of resnet34", block=basic,
                   layers=(3, 4, 6, 3), residual=False)  # fmt: skip

    # He et al. 2016, Table 6: parameters and CIFAR-10 test error (%, best of 5 runs for
    # resnet110, whose mean was 6.61 +/- 0.16).
    table6 = {20: (0.27, 8.75), 32: (0.46, 7.51), 44: (0.66, 7.17), 56: (0.85, 6.97),
              110: (1.7, 6.43), 1202: (19.4, 7.93)}  # fmt: skip
    for depth, (params_m, error) in table6.items():
        register_model(
            f"resnet{depth}",
            CifarResNet,
            "cifar",
            f"CIFAR ResNet-{depth} (6n+2, n={(depth - 2) // 6})",
            paper={"params_m": params_m, "cifar10_error": error},
            depth=depth,
        )
    for depth in (20, 32, 44, 56, 110):
        register_model(
            f"plain{depth}",
            CifarResNet,
            "cifar",
            f"plain twin of resnet{depth}",
            depth=depth,
            residual=False,
        )


_register_zoo()


# (parameters, MACs) of every zoo model at its default input size and class count, so that
# `resnetlab models` prints them without building 24 networks; tests/test_summary.py
# recomputes each entry and checks the counting against torch.utils.flop_counter.
ZOO_STATS: dict[str, tuple[int, int]] = {
    "plain110": (1_727_962, 252_887_680),
    "plain18": (11_515_688, 1_794_805_760),
    "plain20": (269_722, 40_551_040),
    "plain32": (464_154, 68_862_592),
    "plain34": (21_623_848, 3_644_493_824),
    "plain44": (658_586, 97_174_144),
    "plain56": (853_018, 125_485_696),
    "resnet101": (44_549_160, 7_801_405_440),
    "resnet110": (1_727_962, 252_887_680),
    "resnet1202": (19_421_274, 2_829_238_912),
    "resnet152": (60_192_808, 11_513_626_624),
    "resnet18": (11_689_512, 1_814_073_344),
    "resnet20": (269_722, 40_551_040),
    "resnet32": (464_154, 68_862_592),
    "resnet34": (21_797_672, 3_663_761_408),
    "resnet44": (658_586, 97_174_144),
    "resnet50": (25_557_032, 4_089_184_256),
    "resnet50d": (25_576_264, 4_328_824_832),
    "resnet56": (853_018, 125_485_696),
    "resnext101_32x8d": (88_791_336, 16_414_015_488),
    "resnext101_64x4d": (83_455_272, 15_460_270_080),
    "resnext50_32x4d": (25_028_904, 4_230_479_872),
    "wide_resnet101_2": (126_886_696, 22_753_050_624),
    "wide_resnet50_2": (68_883_240, 11_398_021_120),
}
