"""Checkpoints from MindSpore and Keras, written here with those formats' own libraries
(protobuf, h5py), converted to torchvision layout without running anything from the file."""

import json
import re
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from resnetlab import create_model
from resnetlab.artifacts.convert import _checkpoint_message, convert, read_mindspore_ckpt
from resnetlab.cli.commands import main

h5py = pytest.importorskip("h5py")


def _random_resnet50(num_classes=5):
    torch.manual_seed(0)
    net = create_model("resnet50", num_classes=num_classes)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def _ms_name(key: str) -> str:
    """torchvision's key as the MindSpore ResNet tutorial names it."""
    module, _, param = key.rpartition(".")
    is_bn = module.split(".")[-1].startswith("bn") or module.endswith("downsample.1")
    module = re.sub(r"\.bn(\d)$", r".norm\1", re.sub(r"^bn1$", "norm", module))
    module = module.replace("downsample", "down_sample")
    if is_bn:
        param = {
            "weight": "gamma",
            "bias": "beta",
            "running_mean": "moving_mean",
            "running_var": "moving_variance",
        }[param]
    return f"{module}.{param}"


def _write_ms(path, state, extra=()):
    msg = _checkpoint_message()()
    for key, t in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        v = msg.value.add(tag=_ms_name(key))
        v.tensor.dims.extend(t.shape)
        v.tensor.tensor_type = "Float32"
        v.tensor.tensor_content = t.numpy().astype(np.float32).tobytes()
    for name, value in extra:  # optimizer state and counters, as MindSpore saves them
        v = msg.value.add(tag=name)
        v.tensor.dims.extend(value.shape)
        v.tensor.tensor_type = "Float32"
        v.tensor.tensor_content = value.astype(np.float32).tobytes()
    path.write_bytes(msg.SerializeToString())


def test_mindspore_resnet50_converts_and_loads_strictly(tmp_path):
    net = _random_resnet50()
    ckpt = tmp_path / "resnet50_224_new.ckpt"
    extra = [("moments.conv1.weight", np.zeros((64, 3, 7, 7))), ("global_step", np.zeros(1))]
    _write_ms(ckpt, net.state_dict(), extra)
    names = set(read_mindspore_ckpt(ckpt))
    assert {
        "norm.gamma",
        "layer1.0.norm3.moving_variance",
        "layer1.0.down_sample.0.weight",
        "layer1.0.down_sample.1.beta",
        "fc.bias",
    } <= names
    out = tmp_path / "converted.safetensors"
    r = convert(ckpt, "resnet50", out)
    assert r["skipped"] == ["moments.conv1.weight", "global_step"]
    assert r["model_kwargs"] == {"pad_mode": "same"}
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["resnetlab.model_kwargs"]) == {"pad_mode": "same"}
    ours = create_model("resnet50", num_classes=5, pad_mode="same")
    ours.load_state_dict(load_file(out), strict=True)
    ref = net.state_dict()
    assert all(
        torch.equal(v, ref[k])
        for k, v in ours.state_dict().items()
        if not k.endswith("num_batches_tracked")
    )
    # MindSpore pads "same": the 7x7 stride-2 stem pads 2 before and 3 after on a 64 input.
    x = torch.randn(1, 3, 64, 64)
    want = F.conv2d(F.pad(x, (2, 3, 2, 3)), ref["conv1.weight"], stride=2)
    assert torch.allclose(ours.conv1(x), want, atol=1e-5)


def _keras_layers(net):
    """keras.applications ResNet50 names and layouts, with conv biases as Keras has them."""
    rng = np.random.default_rng(0)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    layers, biases = {}, {}

    def conv(name, key):
        w = sd[key + ".weight"].transpose(2, 3, 1, 0)  # (out,in,kh,kw) -> (kh,kw,in,out)
        b = rng.normal(0, 0.1, size=w.shape[-1]).astype(np.float32)
        layers[name] = [w, b]
        return b

    def bn(name, key, bias):
        var = sd[key + ".running_var"] - (1.001e-5 - 1e-5)
        # the same normalisation once the conv bias is folded back into the mean
        layers[name] = [
            sd[key + ".weight"],
            sd[key + ".bias"],
            sd[key + ".running_mean"] + bias,
            var,
        ]

    bn("conv1_bn", "bn1", conv("conv1_conv", "conv1"))
    for s, blocks in enumerate([3, 4, 6, 3], start=2):
        for b in range(1, blocks + 1):
            pre = f"layer{s - 1}.{b - 1}"
            for i in (1, 2, 3):
                bias = conv(f"conv{s}_block{b}_{i}_conv", f"{pre}.conv{i}")
                bn(f"conv{s}_block{b}_{i}_bn", f"{pre}.bn{i}", bias)
            if b == 1:
                bias = conv(f"conv{s}_block{b}_0_conv", f"{pre}.downsample.0")
                bn(f"conv{s}_block{b}_0_bn", f"{pre}.downsample.1", bias)
    layers["predictions"] = [sd["fc.weight"].T, sd["fc.bias"]]
    return layers, biases


def _write_keras2_h5(path, layers):
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [n.encode() for n in ["input_1", *layers]]
        g.create_group("input_1").attrs["weight_names"] = []
        for name, ws in layers.items():
            lg = g.create_group(name)
            kinds = (
                ["kernel:0", "bias:0"]
                if len(ws) == 2
                else ["gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"]
            )
            wn = [f"{name}/{k}".encode() for k in kinds]
            lg.attrs["weight_names"] = wn
            for n, w in zip(wn, ws):
                lg.create_dataset(n.decode(), data=w)


def test_keras_h5_and_keras3_convert_with_biases_folded(tmp_path):
    net = create_model("resnet50", num_classes=4, stride_in_1x1=True).eval()
    layers, _ = _keras_layers(net)
    h5 = tmp_path / "resnet50.h5"
    _write_keras2_h5(h5, layers)
    out = tmp_path / "from_h5.safetensors"
    r = convert(h5, "resnet50", out)
    assert r["model_kwargs"] == {"stride_in_1x1": True} and r["skipped"] == []
    ours = create_model("resnet50", num_classes=4, stride_in_1x1=True)
    ours.load_state_dict(load_file(out), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), net(x), atol=1e-4, rtol=1e-4)

    # Keras 3: a zip with model.weights.h5, layers/<name>/vars/<i>.
    inner = tmp_path / "model.weights.h5"
    with h5py.File(inner, "w") as f:
        for name, ws in layers.items():
            g = f.create_group(f"layers/{name}/vars")
            for i, w in enumerate(ws):
                g.create_dataset(str(i), data=w)
    k3 = tmp_path / "resnet50.keras"
    with zipfile.ZipFile(k3, "w") as z:
        z.write(inner, "model.weights.h5")
        z.writestr("config.json", "{}")
    out3 = tmp_path / "from_keras3.safetensors"
    convert(k3, "resnet50", out3)
    a, b = load_file(out), load_file(out3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_files_get_one_clear_line(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x80\x04\x95 not protobuf at all \xff\xff")
    out = tmp_path / "o.safetensors"
    assert main(["convert", str(junk), "--model", "resnet50", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "junk.ckpt" in err and not out.exists()
    small = tmp_path / "r18.ckpt"
    _write_ms(small, create_model("resnet18", num_classes=3).state_dict())
    assert main(["convert", str(small), "--model", "resnet50", "--out", str(out)]) == 2
    assert "do not make a resnet50" in capsys.readouterr().err
    out.write_bytes(b"keep me")
    assert main(["convert", str(small), "--model", "resnet18", "--out", str(out)]) == 2
    assert out.read_bytes() == b"keep me"


def test_converted_weights_train_through_the_cli(tmp_path, capsys):
    from datagen import make_folder

    ckpt = tmp_path / "r50.ckpt"
    _write_ms(ckpt, _random_resnet50(num_classes=1000).state_dict())
    out = tmp_path / "r50.safetensors"
    assert main(["convert", str(ckpt), "--model", "resnet50", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "--model-kwargs pad_mode=same" in said
    data = make_folder(tmp_path / "herbs", {"黄芪": 8, "当归": 8}, size=(40, 36))
    argv = [
        "train",
        "--data",
        str(data),
        "--model",
        "resnet50",
        "--weights",
        str(out),
        "--model-kwargs",
        "pad_mode=same",
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--out",
        str(tmp_path / "runs"),
    ]
    assert main(argv) == 0
