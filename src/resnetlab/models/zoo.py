"""Every named model: thin entries that fix block, depths and widths over the family builders.

Names and state_dict keys follow torchvision where it has the model, else timm (``timm_name``
records timm's name where the two share keys, so timm's weights load strictly), else
torchvision-style keys (the CIFAR families).
"""

from __future__ import annotations

from .cifar import CifarResNet
from .preact import PreActResNet
from .preact_cifar import PreActCifarResNet
from .registry import register_model
from .resnet import ResNet

BASIC, BOTTLENECK = "basic", "bottleneck"
# Stage depths of the ImageNet ResNets (He et al. 2015, Table 1; 26 is timm's 2-2-2-2
# bottleneck net).
DEPTHS = {
    18: (BASIC, (2, 2, 2, 2)),
    26: (BOTTLENECK, (2, 2, 2, 2)),
    34: (BASIC, (3, 4, 6, 3)),
    50: (BOTTLENECK, (3, 4, 6, 3)),
    101: (BOTTLENECK, (3, 4, 23, 3)),
    152: (BOTTLENECK, (3, 8, 36, 3)),
}
# ResNet-D ("Bag of Tricks", arXiv:1812.01187, sec. 4): three-conv stem 32-32-64 and
# average-pool downsampling; "t" is timm's tiered stem (24-32-64).
RESNET_D = dict(stem_type="deep", stem_width=32, avg_down=True)
RESNET_T = dict(stem_type="deep_tiered", stem_width=32, avg_down=True)
SE = dict(attn_layer="se")


def _imagenet(
    name: str, depth: int, desc: str, tags: tuple[str, ...], timm: bool = True, **extra
) -> None:
    block, layers = DEPTHS[depth]
    register_model(
        name,
        ResNet,
        "imagenet",
        desc,
        tags=tags,
        timm_name=name if timm else None,
        block=block,
        layers=layers,
        **extra,
    )


def _register_imagenet() -> None:
    for depth in (18, 34, 50, 101, 152):
        v15 = " (v1.5)" if DEPTHS[depth][0] == BOTTLENECK else ""
        _imagenet(f"resnet{depth}", depth, f"ResNet-{depth}{v15}", ("resnet",))
    for groups, width, depth in ((32, 4, 50), (32, 8, 101), (64, 4, 101)):
        _imagenet(
            f"resnext{depth}_{groups}x{width}d",
            depth,
            f"ResNeXt-{depth} {groups}x{width}d",
            ("resnext",),
            groups=groups,
            width_per_group=width,
        )
    for depth in (50, 101):
        # Wide ResNet-50-2: the bottleneck's inner width doubled (arXiv:1605.07146).
        _imagenet(
            f"wide_resnet{depth}_2", depth, f"Wide ResNet-{depth}-2", ("wide",), width_per_group=128
        )
    for depth in (18, 34, 50, 101, 152):
        _imagenet(
            f"resnet{depth}d",
            depth,
            f"ResNet-{depth}-D: deep stem, average-pool downsample (Bag of Tricks)",
            ("resnet", "resnet-d"),
            **RESNET_D,
        )
    for depth in (18, 34):  # plain twins for the degradation experiment
        _imagenet(
            f"plain{depth}",
            depth,
            f"plain twin of resnet{depth}",
            ("plain",),
            timm=False,
            residual=False,
        )

    # SE-ResNet / SE-ResNeXt (Hu et al., arXiv:1709.01507), as timm names them.
    for depth in (18, 34, 50, 101, 152):
        _imagenet(f"seresnet{depth}", depth, f"SE-ResNet-{depth}", ("se", "resnet"), **SE)
    _imagenet(
        "seresnet152d", 152, "SE-ResNet-152-D", ("se", "resnet", "resnet-d"), **SE, **RESNET_D
    )
    senext = [
        ("seresnext26d_32x4d", 26, 32, 4, RESNET_D),
        ("seresnext26t_32x4d", 26, 32, 4, RESNET_T),
        ("seresnext50_32x4d", 50, 32, 4, {}),
        ("seresnext101_32x4d", 101, 32, 4, {}),
        ("seresnext101_32x8d", 101, 32, 8, {}),
        ("seresnext101d_32x8d", 101, 32, 8, RESNET_D),
        ("seresnext101_64x4d", 101, 64, 4, {}),
    ]
    for name, depth, groups, width, stem in senext:
        tags = ("se", "resnext") + (("resnet-d",) if stem else ())
        desc = f"SE-ResNeXt-{depth} {groups}x{width}d" + (" (ResNet-D stem)" if stem else "")
        _imagenet(name, depth, desc, tags, groups=groups, width_per_group=width, **SE, **stem)

    # Pre-activation ResNets (He et al. 2016, arXiv:1603.05027): timm's resnetv2_* with its keys.
    for depth in (18, 34, 50, 101, 152):
        block, layers = DEPTHS[depth]
        register_model(
            f"preact_resnet{depth}",
            PreActResNet,
            "imagenet",
            f"pre-activation ResNet-{depth}",
            tags=("preact",),
            timm_name=f"resnetv2_{depth}",
            block=block,
            layers=layers,
        )


def _register_cifar() -> None:
    source = "He et al. 2015 (arXiv:1512.03385), Table 6"
    # Parameters (M) and CIFAR-10 test error (%, best of 5 runs for resnet110, whose mean was
    # 6.61 +/- 0.16).
    table6 = {
        20: (0.27, 8.75),
        32: (0.46, 7.51),
        44: (0.66, 7.17),
        56: (0.85, 6.97),
        110: (1.7, 6.43),
        1202: (19.4, 7.93),
    }
    for depth, (params_m, error) in table6.items():
        register_model(
            f"resnet{depth}",
            CifarResNet,
            "cifar",
            f"CIFAR ResNet-{depth} (6n+2, n={(depth - 2) // 6})",
            paper={"params_m": params_m, "cifar10_error": error, "source": source},
            tags=("resnet",),
            depth=depth,
        )
    for depth in (20, 32, 44, 56, 110):
        register_model(
            f"plain{depth}",
            CifarResNet,
            "cifar",
            f"plain twin of resnet{depth}",
            tags=("plain",),
            depth=depth,
            residual=False,
        )

    # He et al. 2016 (arXiv:1603.05027), Table 3 (pre-activation column; CIFAR-100 for the
    # bottleneck nets) with the parameters of Table 4. Median of 5 runs at mini-batch 128;
    # ResNet-1001 reached 4.62 % on CIFAR-10 at mini-batch 64 (Table 4).
    preact = {
        110: (BASIC, {"params_m": 1.7, "cifar10_error": 6.37}),
        164: (BOTTLENECK, {"params_m": 1.7, "cifar10_error": 5.46, "cifar100_error": 24.33}),
        1001: (BOTTLENECK, {"params_m": 10.2, "cifar10_error": 4.92, "cifar100_error": 22.71}),
    }
    for depth in (20, 32, 44, 56):
        preact[depth] = (BASIC, {})
    for depth, (block, paper) in sorted(preact.items()):
        rule = (
            f"9n+2, n={(depth - 2) // 9}" if block == BOTTLENECK else f"6n+2, n={(depth - 2) // 6}"
        )
        if paper:
            paper["source"] = "He et al. 2016 (arXiv:1603.05027), Tables 3-4"
        register_model(
            f"preact_resnet{depth}",
            PreActCifarResNet,
            "cifar",
            f"CIFAR pre-activation ResNet-{depth} ({block}, {rule})",
            paper=paper,
            tags=("preact",),
            depth=depth,
            block=block,
        )


_register_imagenet()
_register_cifar()
