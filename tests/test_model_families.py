"""The families beyond torchvision: pre-activation, SE, ResNet-D; drop path; "same" padding.

Where timm has the same network, its state_dict loads into ours strictly and both give the
same logits. timm is a test dependency: without it those tests skip locally and fail in CI.
"""

import math
import os
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from resnetlab import create_model, list_models
from resnetlab.cli.commands import main
from resnetlab.core.errors import ConfigError
from resnetlab.models import get_model_entry, list_families, model_for_timm_name
from resnetlab.models.layers import DropPath
from resnetlab.models.padding import Conv2dSame, MaxPool2dSame, same_padding
from resnetlab.models.preact_cifar import PreActCifarResNet

TIMM_TWINS = [n for n in list_models() if get_model_entry(n).timm_name]
# One of each block type, stem and option that timm shares with us; the rest differ only in
# depth and width, and their keys and shapes are checked against timm for every name below.
TIMM_OUTPUTS = [
    "resnet18d",
    "resnet50d",
    "seresnet18",
    "seresnet50",
    "seresnext26d_32x4d",
    "seresnext26t_32x4d",
    "preact_resnet18",
    "preact_resnet50",
]


def _timm():
    try:
        import timm
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("timm is not installed; it is in the dev extra (pip install timm)")
        pytest.skip("timm is not installed")
    return timm


def _randomize(model: nn.Module) -> None:
    """Non-trivial values everywhere, running statistics included, at a sane scale."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var") or (t.ndim == 1 and name.endswith("weight")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name", TIMM_TWINS)
def test_keys_and_shapes_are_timms(name):
    timm = _timm()
    with torch.device("meta"):
        theirs = timm.create_model(get_model_entry(name).timm_name, num_classes=10)
        ours = create_model(name, num_classes=10)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]


@pytest.mark.parametrize("name", TIMM_OUTPUTS)
def test_timm_weights_load_strictly_and_outputs_agree(name):
    timm = _timm()
    theirs = timm.create_model(get_model_entry(name).timm_name, num_classes=10).eval()
    _randomize(theirs)
    ours = create_model(name, num_classes=10).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff < 1e-5


def _drop_path_rates(model: nn.Module) -> list[float]:
    """Each residual unit's drop probability (0 where it has no DropPath)."""
    units = [m for m in model.modules() if hasattr(m, "drop_path")]
    return [getattr(u.drop_path, "drop_prob", 0.0) for u in units]


def test_timm_drop_path_rates_are_ours():
    timm = _timm()
    for name in ("seresnet18", "resnet50d", "preact_resnet18"):
        theirs = timm.create_model(get_model_entry(name).timm_name, drop_path_rate=0.2)
        ours = create_model(name, drop_path_rate=0.2)
        assert _drop_path_rates(ours) == pytest.approx(_drop_path_rates(theirs))


def test_timm_same_padding_conv_is_ours():
    theirs = _timm().layers.create_conv2d(3, 64, 7, stride=2, padding="same")
    ours = create_model("resnet18", pad_mode="same").conv1
    ours.weight.data.copy_(theirs.weight.data)
    for size in (64, 65):
        x = torch.randn(1, 3, size, size)
        torch.testing.assert_close(ours(x), theirs(x))


# ------------------------------------------------------------------ build, names, families


@pytest.mark.parametrize(
    "name",
    ["preact_resnet18", "preact_resnet20", "seresnet18", "seresnext26d_32x4d", "resnet18d"],
)
def test_onnx_export_matches_torch(name):
    """One model per new builder and block type (deeper ones repeat the same modules)."""
    ort = pytest.importorskip("onnxruntime")
    model = create_model(name, num_classes=5, drop_path_rate=0.1).eval()
    x = torch.randn(2, 3, 48, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)


def test_families_and_tags():
    assert set(list_families()) >= {"imagenet", "cifar", "preact", "se", "resnet-d"}
    preact = list_models(family="preact")
    assert {"preact_resnet18", "preact_resnet152", "preact_resnet110", "preact_resnet1001"} <= set(
        preact
    )
    assert set(list_models("preact*")) == set(preact)
    assert all(n.startswith("se") for n in list_models(family="se"))
    assert {"resnet18d", "resnet34d", "resnet50d", "resnet101d", "resnet152d"} <= set(
        list_models(family="resnet-d")
    )
    assert "preact_resnet1001" in list_models(family="cifar")
    assert "preact_resnet50" in list_models(family="imagenet")
    with pytest.raises(ConfigError, match="preact"):
        list_models(family="preactivation")


def test_timm_names_map_to_ours():
    assert model_for_timm_name("resnetv2_50.a1h_in1k") == "preact_resnet50"
    assert model_for_timm_name("seresnext26d_32x4d") == "seresnext26d_32x4d"
    assert model_for_timm_name("resnet50") == "resnet50"
    assert model_for_timm_name("vit_base_patch16_224") is None
    entry = get_model_entry("preact_resnet50")
    assert (entry.family, entry.input_size, entry.default_num_classes) == (
        "imagenet",
        (3, 224, 224),
        1000,
    )


def _weighted(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


@pytest.mark.parametrize("depth", [110, 164, 1001])
def test_preact_cifar_matches_the_paper(depth):
    entry = get_model_entry(f"preact_resnet{depth}")
    assert entry.paper["source"].startswith("He et al. 2016 (arXiv:1603.05027)")
    with torch.device("meta"):
        model = create_model(f"preact_resnet{depth}")
    # The paper's parameter counts are those of the weighted layers (10.2M for ResNet-1001).
    assert round(_weighted(model) / 1e6, 1) == entry.paper["params_m"]
    units = sum(len(getattr(model, f"layer{i}")) for i in (1, 2, 3))
    assert units == {110: 54, 164: 54, 1001: 333}[depth]  # 333 units, 111 per map size


def test_paper_view_lists_preact_figures(capsys):
    assert main(["models", "preact_resnet1*", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "4.92%" in out and "10.2M" in out and "5.46%" in out and "6.37%" in out


def test_preact_cifar_structure():
    model = create_model("preact_resnet164")
    # The paper's code strides bottlenecks on the first 1x1 conv and projects the shortcut
    # from the pre-activated input.
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.layer1[0].downsample[0].out_channels == 64
    keys = list(model.state_dict())
    assert keys[:3] == ["conv1.weight", "layer1.0.downsample.0.weight", "layer1.0.bn1.weight"]
    assert keys[-6:] == [
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ]
    a = create_model("preact_resnet20", shortcut="A")
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in a.modules())
    with pytest.raises(ValueError, match="9n\\+2"):
        PreActCifarResNet(depth=100, block="bottleneck")


def test_preact_zero_init_makes_every_unit_an_identity():
    model = create_model("preact_resnet20", zero_init_residual=True).eval()
    unit = model.layer1[1]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), x)


def test_preact_head_is_a_conv_and_resets():
    model = create_model("preact_resnet18", num_classes=4)
    assert model.get_classifier() is model.head.fc
    assert model.head.fc.weight.shape == (4, 512, 1, 1)
    model.reset_classifier(9)
    assert model.get_classifier().out_features == 9
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 9)
    names = [n for n, _ in model.parameter_groups()]
    assert names == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert model.first_conv == "stem.conv" and "stem.conv.weight" in model.state_dict()


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("preact_resnet50", {"attn_layer": "se"}, "does not accept 'attn_layer'"),
        ("seresnet18", {"attn_layer": None}, "fixes attn_layer"),
        ("resnet18", {"attn_layer": "cbam"}, "attn_layer='cbam'"),
        ("resnet18", {"pad_mode": "valid"}, "pad_mode='valid'"),
        ("preact_resnet20", {"drop_path_rate": 1.0}, "drop_path_rate"),
        ("plain20", {"drop_path_rate": 0.1}, "plain nets"),
        ("preact_resnet110", {"shortcut": "C"}, "shortcut"),
        ("preact_resnet50", {"drop_path": 0.1}, "did you mean drop_path_rate"),
    ],
)
def test_bad_kwargs_name_the_problem(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, **kwargs)


# ------------------------------------------------------------------ stochastic depth, dropout


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "preact_resnet18", "preact_resnet20"])
def test_drop_path_rises_linearly_and_only_trains(name):
    model = create_model(name, num_classes=3, drop_path_rate=0.3)
    rates = _drop_path_rates(model)
    assert rates == pytest.approx([0.3 * i / (len(rates) - 1) for i in range(len(rates))])
    plain = create_model(name, num_classes=3)
    plain.load_state_dict(model.state_dict(), strict=True)  # no new parameters
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))  # identity at evaluation
        assert not torch.allclose(model.train()(x), plain.train()(x))


@pytest.mark.parametrize("name", ["preact_resnet18", "preact_resnet20", "seresnet18"])
def test_dropout_before_the_head(name):
    model = create_model(name, num_classes=3, drop_rate=0.5)
    feats = torch.ones(16, model.num_features)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_head(feats), model.get_classifier()(feats))
        assert not torch.allclose(model.train().forward_head(feats), model.get_classifier()(feats))


def test_drop_path_drops_whole_samples_and_rescales():
    layer = DropPath(0.5).train()
    out = layer(torch.ones(64, 3, 2, 2))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # a sample is kept or dropped as a whole
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


# ------------------------------------------------------------------ "same" padding


def test_same_padding_amounts():
    assert same_padding(224, 7, 2) == (2, 3)  # the 7x7 stem
    assert same_padding(112, 3, 2) == (0, 1)  # 3x3 conv or max-pool at stride 2
    assert same_padding(225, 7, 2) == (3, 3)  # odd sizes pad symmetrically
    assert same_padding(56, 3, 1) == (1, 1)  # stride 1: PyTorch's padding already


@pytest.mark.parametrize("name", ["resnet18", "resnet50d", "preact_resnet18", "resnet20"])
def test_same_padding_keeps_keys_and_pads_after(name):
    ref = create_model(name, num_classes=3).eval()
    model = create_model(name, num_classes=3, pad_mode="same").eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    assert list(model.state_dict()) == list(ref.state_dict())
    assert any(isinstance(m, Conv2dSame) for m in model.modules())
    assert name == "resnet20" or any(isinstance(m, MaxPool2dSame) for m in model.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 3)
        assert not torch.allclose(model(x), ref(x))  # the strided layers now look elsewhere


def test_same_padding_equals_pad_then_convolve():
    model = create_model("resnet18", pad_mode="same").eval()
    x = torch.randn(1, 3, 64, 64)
    w = model.conv1.weight
    with torch.no_grad():
        stem = model.conv1(x)
        torch.testing.assert_close(stem, F.conv2d(F.pad(x, (2, 3, 2, 3)), w, stride=2))
        pooled = model.maxpool(stem)
        expected = F.max_pool2d(F.pad(stem, (0, 1, 0, 1), value=-math.inf), 3, 2)
        torch.testing.assert_close(pooled, expected)
        conv = model.layer2[0].conv1  # 3x3 at stride 2 on a 16x16 map
        y = torch.randn(1, 64, 16, 16)
        torch.testing.assert_close(conv(y), F.conv2d(F.pad(y, (0, 1, 0, 1)), conv.weight, stride=2))
        assert model.layer2[0].downsample[0].padding == (0, 0)  # 1x1: nothing to pad
        odd = torch.randn(1, 3, 65, 65)
        torch.testing.assert_close(
            model.conv1(odd), F.conv2d(F.pad(odd, (3, 3, 3, 3)), w, stride=2)
        )
    assert stem.shape[-1] == 32 and pooled.shape[-1] == 16  # ceil(in / stride)


def test_same_padding_exports_to_onnx():
    ort = pytest.importorskip("onnxruntime")
    model = create_model("resnet18", num_classes=4, pad_mode="same").eval()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), atol=1e-4, rtol=1e-4)
