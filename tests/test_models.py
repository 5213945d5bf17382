"""Every registered model: shapes at two input sizes, gradients, finiteness, API."""

import copy

import pytest
import torch
from torch import nn

from resnetlab import create_model, list_models
from resnetlab.models import get_model_entry, register_model
from resnetlab.models.cifar import CifarResNet
from resnetlab.models.registry import natural_key

ALL = list_models()


def _sizes(name: str) -> list[tuple[int, int]]:
    # Small inputs keep the suite fast; a non-square size proves nothing is tied to one shape.
    return [(32, 32), (48, 40)]


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_model(name):
    model = create_model(name, num_classes=7)
    model.train()
    for h, w in _sizes(name):
        x = torch.randn(2, 3, h, w)
        out = model(x)
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()
    model.zero_grad()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    # The state_dict (trained running statistics included) round-trips into a fresh model
    # (built on the meta device: its own initialisation would be overwritten anyway).
    with torch.device("meta"):
        fresh = create_model(name, num_classes=7)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh.load_state_dict(state, strict=True, assign=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x[:1]), model.eval()(x[:1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_parameter_groups_hold_every_parameter_once(name):
    with torch.device("meta"):
        model = create_model(name)
    grouped = [id(p) for _, mods in model.parameter_groups() for m in mods for p in m.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert model.get_classifier() is model.get_submodule(model.classifier_name)
    assert f"{model.first_conv}.weight" in model.state_dict()


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet50",
        "resnet20",
        "plain20",
        "resnet50d",
        "seresnet18",
        "preact_resnet18",
        "preact_resnet20",
    ],
)
def test_feature_api(name):
    model = create_model(name, num_classes=5, in_chans=1).eval()
    x = torch.randn(3, 1, 32, 32)
    feats = model.forward_features(x)  # timm's contract: the unpooled map
    assert feats.ndim == 4 and feats.shape[:2] == (3, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    pooled = model.forward_pooled(x)
    assert pooled.shape == (3, model.num_features)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), pooled)
    torch.testing.assert_close(model.forward_head(pooled), model(x))  # pooled taken as is
    model.reset_classifier(11)
    assert model(x).shape == (3, 11)
    assert model.get_classifier().out_features == 11
    model.reset_classifier(0)
    assert model(x).shape == (3, model.num_features)
    groups = [g for g, _ in model.parameter_groups()]
    assert groups[0] == "stem" and groups[-1] == "head"


def test_list_models_pattern_and_family():
    assert list_models() == sorted(list_models(), key=natural_key)
    assert list_models("resnext*") == ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
    assert "resnet20" in list_models(family="cifar")
    assert "resnet20" not in list_models(family="imagenet")
    for required in [
        "resnet18 resnet34 resnet50 resnet101 resnet152 resnext50_32x4d resnext101_32x8d",
        "resnext101_64x4d wide_resnet50_2 wide_resnet101_2 resnet50d",
        "resnet20 resnet32 resnet44 resnet56 resnet110 resnet1202",
        "plain18 plain34 plain20 plain32 plain44 plain56 plain110",
        "preact_resnet18 preact_resnet34 preact_resnet50 preact_resnet101 preact_resnet152",
        "preact_resnet110 preact_resnet164 preact_resnet1001",
        "seresnet18 seresnet34 seresnet50 seresnet101 seresnet152 seresnext26d_32x4d",
        "seresnext50_32x4d seresnext101_32x8d",
        "resnet18d resnet34d resnet50d resnet101d resnet152d",
    ]:
        assert set(required.split()) <= set(ALL)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="resnet18"):
        create_model("resnt18")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zero_init_resdual": True}, "zero_init_residual"),
        ({"shortcut": "A"}, "does not accept 'shortcut'"),
        ({"init": "xavier"}, "init='xavier'"),
        ({"num_classes": -1}, "num_classes"),
        ({"in_chans": 0}, "in_chans"),
        ({"norm_layer": "layernorm2d"}, "norm_layer"),
        ({"replace_stride_with_dilation": [True]}, "replace_stride_with_dilation"),
        ({"layers": (1, 1, 1, 1)}, "fixes layers"),
        ({"residual": "no"}, "residual"),
    ],
)
def test_bad_kwargs_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("resnet18", **kwargs)


def test_cifar_kwargs_checked():
    with pytest.raises(ValueError, match="shortcut"):
        create_model("resnet20", shortcut="C")
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="fixes residual"):
        create_model("plain20", residual=True)
    with pytest.raises(ValueError, match="zero_init_residual"):
        create_model("resnet20", residual=False, zero_init_residual=True)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18", CifarResNet, "cifar", depth=20)


def test_default_num_classes_per_family():
    assert create_model("resnet20").fc.out_features == 10
    assert get_model_entry("resnet20").input_size == (3, 32, 32)
    assert get_model_entry("resnet50").input_size == (3, 224, 224)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "depth, params",
    [
        (20, 269_722),
        (32, 464_154),
        (44, 658_586),
        (56, 853_018),
        (110, 1_727_962),
        (1202, 19_421_274),
    ],
)
def test_cifar_parameter_counts_match_paper(depth, params):
    with torch.device("meta"):
        assert _count(create_model(f"resnet{depth}", num_classes=10)) == params
        if depth != 1202:
            assert _count(create_model(f"plain{depth}", num_classes=10)) == params


def test_cifar_shortcut_b_adds_projections():
    a = create_model("resnet20")
    b = create_model("resnet20", shortcut="B")
    assert _count(b) > _count(a)
    assert isinstance(b.layer2[0].downsample, nn.Sequential)
    out = a.layer2[0].downsample(torch.ones(1, 16, 8, 8))
    # Option A: subsample 2x and zero-pad 16 -> 32 channels, 8 of them on each side.
    assert out.shape == (1, 32, 4, 4)
    assert out[:, 8:24].eq(1).all() and out[:, :8].eq(0).all() and out[:, 24:].eq(0).all()


def test_plain_models_have_no_shortcuts():
    for name in ["plain18", "plain20"]:
        model = create_model(name)
        assert all(getattr(m, "downsample", None) is None for m in model.modules())
        assert all(not getattr(m, "residual", True) for m in model.modules() if hasattr(m, "conv2"))
    with torch.device("meta"):
        twin = create_model("resnet34", residual=False)
        assert _count(twin) == _count(create_model("plain34"))


def test_residual_false_changes_forward():
    torch.manual_seed(1)
    res = create_model("resnet20").eval()
    plain = create_model("resnet20", residual=False).eval()
    plain.load_state_dict(res.state_dict())  # option A has no extra parameters
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(res(x), plain(x))


def test_bottleneck_stride_placement():
    v15 = create_model("resnet50")
    v1 = create_model("resnet50", stride_in_1x1=True)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)


def test_dilation_keeps_resolution():
    model = create_model("resnet50", replace_stride_with_dilation=[False, True, True])
    fmap = model.forward_feature_map(torch.randn(1, 3, 64, 64))
    assert fmap.shape[-2:] == (8, 8)  # output stride 8 instead of 32
    assert model.layer4[1].conv2.dilation == (4, 4)


def test_zero_init_residual_and_normal_init():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(
        b.bn3.weight.abs().sum() == 0 for layer in [model.layer1, model.layer4] for b in layer
    )
    basic = create_model("resnet20", zero_init_residual=True)
    assert basic.layer3[2].bn2.weight.abs().sum() == 0

    model = create_model("resnet50", init="normal")
    w = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Conv2d)])
    assert abs(w.std().item() - 0.02) < 0.001
    g = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(g.mean().item() - 1.0) < 0.005 and abs(g.std().item() - 0.02) < 0.002


def test_norm_layer_choices():
    gn = create_model("resnet20", norm_layer="groupnorm")
    assert isinstance(gn.bn1, nn.GroupNorm)
    custom = create_model("resnet18", norm_layer=lambda c: nn.BatchNorm2d(c, eps=1e-3))
    assert custom.bn1.eps == 1e-3
    assert gn(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet50d_structure():
    model = create_model("resnet50d")
    assert _count(model) == 25_576_264  # the figure timm reports for resnet50d
    assert [type(m).__name__ for m in model.conv1] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
    ]
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)
    assert model.layer2[0].downsample[1].stride == (1, 1)
    # At stride 1 the pooling slot stays, as an identity: the projection is downsample.1/.2
    # in every stage, as in timm's ResNet-D weights.
    assert isinstance(model.layer1[0].downsample[0], nn.Identity)
    keys = [k for k in model.state_dict() if k.startswith("layer1.0.downsample.")]
    assert keys[0] == "layer1.0.downsample.1.weight" and keys[1] == "layer1.0.downsample.2.weight"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_stem_pools_before_relu_with_identical_results(dtype):
    # In training the stem runs max-pool before ReLU (cheaper); outputs and every gradient
    # must equal the conv-BN-ReLU-pool order exactly, ties and all-negative windows included.
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3).train()
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 40, 36).round()  # integers: many equal values inside pool windows
    x[0, :, :12] = -3.0  # whole windows at or below zero after BN
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        a = model.forward_stem(xa)
        r = reference
        b = r.maxpool(r.relu(r.bn1(r.conv1(xb))))
    assert a.dtype == dtype and torch.equal(a, b)
    grad = torch.randn_like(a)
    a.backward(grad)
    b.backward(grad)
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(model.conv1.weight.grad, reference.conv1.weight.grad)
    assert torch.equal(model.bn1.weight.grad, reference.bn1.weight.grad)
    assert torch.equal(model.bn1.running_mean, reference.bn1.running_mean)
    model.eval()
    with torch.no_grad():  # evaluation keeps the usual order
        assert torch.equal(model.forward_stem(x), reference.eval().forward_stem(x))
