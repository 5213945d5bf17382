"""Checkpoints from other frameworks to torchvision-layout weights, without their code.

- MindSpore ``.ckpt``: a protobuf file of named tensors (``Checkpoint.value[]`` with ``tag`` and
  ``tensor {dims, tensor_type, tensor_content}``), read with the ``protobuf`` package from a
  schema declared here. Nothing in the file is executed.
- Keras ``.h5`` (Keras 2, whole model or weights only) and ``.keras`` (Keras 3: a zip holding
  ``model.weights.h5``), read with ``h5py`` as plain arrays.

The result is a state_dict with torchvision's keys (``conv1``, ``bn1``, ``layer1..4``, ``fc``,
``downsample.0/1``) plus the model options the weights need (``pad_mode="same"`` for
MindSpore's asymmetric padding, ``stride_in_1x1`` for Keras' ResNet v1), written as
safetensors with those options in its metadata.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError, WeightsError
from ..core.optional import require

# MindSpore's tensor_type names to numpy dtypes (bf16 is widened to float32 below).
MS_DTYPES = {
    "Float32": np.float32,
    "Float16": np.float16,
    "Float64": np.float64,
    "Int8": np.int8,
    "Int16": np.int16,
    "Int32": np.int32,
    "Int64": np.int64,
    "UInt8": np.uint8,
    "Bool": np.bool_,
    "BFloat16": np.uint16,
}
BN_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# Keras' BatchNormalization in keras.applications' ResNets uses epsilon 1.001e-5; PyTorch's
# 1e-5. Adding the difference to the running variance gives the same normalisation exactly.
KERAS_BN_EPS = 1.001e-5
TORCH_BN_EPS = 1e-5


def _checkpoint_message():
    """The MindSpore checkpoint schema (checkpoint.proto, proto2) as a protobuf class."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(
        name="resnetlab_ms_checkpoint.proto", package="resnetlab_ms", syntax="proto2"
    )
    T = descriptor_pb2.FieldDescriptorProto
    tensor = f.message_type.add(name="TensorProto")
    tensor.field.add(name="dims", number=1, type=T.TYPE_INT64, label=T.LABEL_REPEATED)
    tensor.field.add(name="tensor_type", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    tensor.field.add(name="tensor_content", number=3, type=T.TYPE_BYTES, label=T.LABEL_OPTIONAL)
    ckpt = f.message_type.add(name="Checkpoint")
    value = ckpt.nested_type.add(name="Value")
    value.field.add(name="tag", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    value.field.add(
        name="tensor",
        number=2,
        type=T.TYPE_MESSAGE,
        label=T.LABEL_OPTIONAL,
        type_name=".resnetlab_ms.TensorProto",
    )
    ckpt.field.add(
        name="value",
        number=1,
        type=T.TYPE_MESSAGE,
        label=T.LABEL_REPEATED,
        type_name=".resnetlab_ms.Checkpoint.Value",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("resnetlab_ms.Checkpoint"))


def read_mindspore_ckpt(path: str | Path) -> dict[str, np.ndarray]:
    """Every named tensor of a MindSpore checkpoint; slices sharing a tag are joined."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    msg = _checkpoint_message()()
    try:
        msg.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{path}: not a MindSpore checkpoint (protobuf: {exc})") from None
    chunks: dict[str, list] = {}
    for v in msg.value:
        t = v.tensor
        if not v.tag or not t.tensor_type:
            continue  # map tensors and other entries carry no plain weights
        if t.tensor_type not in MS_DTYPES:
            raise WeightsError(f"{path}: tensor {v.tag!r} has unknown type {t.tensor_type!r}")
        chunks.setdefault(v.tag, []).append((t.tensor_type, list(t.dims), t.tensor_content))
    if not chunks:
        raise WeightsError(f"{path}: no tensors found; is it a MindSpore .ckpt file?")
    out = {}
    for tag, parts in chunks.items():
        kind, dims = parts[0][0], parts[0][1]
        data = np.frombuffer(b"".join(p[2] for p in parts), dtype=MS_DTYPES[kind])
        if kind == "BFloat16":  # bf16 is the upper half of a float32
            data = (data.astype(np.uint32) << 16).view(np.float32)
        shape = [d for d in dims if d] if dims != [0] else []
        if int(np.prod(shape)) != data.size:
            raise WeightsError(f"{path}: tensor {tag!r} holds {data.size} values for {shape}")
        out[tag] = data.reshape(shape).copy()
    return out


def mindspore_to_torchvision(tensors: dict[str, np.ndarray]) -> tuple[dict, list[str]]:
    """MindSpore ResNet names (``norm``, ``normN``, ``down_sample``, ``gamma``...) to
    torchvision's; optimizer state and step counters are left out (returned by name)."""
    state, skipped = {}, []
    for name, value in tensors.items():
        parts = name.split(".")
        if parts[0] not in ("conv1", "norm", "fc") and not re.fullmatch(r"layer\d", parts[0]):
            skipped.append(name)  # moments.*, learning_rate, global_step, ...
            continue
        parts = [{"norm": "bn1", "down_sample": "downsample"}.get(p, p) for p in parts]
        parts = [re.sub(r"^norm(\d)$", r"bn\1", p) for p in parts]
        parts[-1] = BN_NAMES.get(parts[-1], parts[-1])
        state[".".join(parts)] = torch.from_numpy(np.ascontiguousarray(value))
    return state, skipped


def read_keras(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Each layer's weights in Keras' order (conv: kernel, bias; BN: gamma, beta, mean, var)."""
    h5py = require("h5py", "converting a Keras .h5 checkpoint")

    path = Path(path)
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as raw:
                import io

                with h5py.File(io.BytesIO(raw.read()), "r") as f:
                    return _keras3_layers(f)
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            return _keras2_layers(root)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{path}: not a Keras weights file ({exc})") from None


def _keras2_layers(root) -> dict[str, list[np.ndarray]]:
    out = {}
    for layer in root.attrs.get("layer_names", list(root.keys())):
        layer = layer.decode() if isinstance(layer, bytes) else layer
        g = root[layer]
        names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
        if names:
            out[layer] = [np.asarray(g[n]) for n in names]
    return out


def _keras3_layers(f) -> dict[str, list[np.ndarray]]:
    out = {}
    for layer, g in f["layers"].items():
        if "vars" in g and len(g["vars"]):
            out[layer] = [np.asarray(g["vars"][str(i)]) for i in range(len(g["vars"]))]
    return out


def keras_to_torchvision(layers: dict[str, list[np.ndarray]]) -> tuple[dict, list[str]]:
    """keras.applications ResNet50/101/152 (v1) layer names to torchvision keys. Conv biases
    (Keras convs have them) are folded into the following BatchNorm's running mean."""
    state, skipped = {}, []
    convs = {}
    for layer, weights in layers.items():
        m = re.fullmatch(
            r"conv(\d)_block(\d+)_(\d)_(conv|bn)|conv1_(conv|bn)|predictions|fc\d*", layer
        )
        if m is None:
            skipped.append(layer)
            continue
        if layer.startswith(("predictions", "fc")):
            state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(weights[0].T))
            state["fc.bias"] = torch.from_numpy(weights[1].copy())
            continue
        if layer.startswith("conv1_"):
            conv, bn, kind = "conv1", "bn1", m.group(5)
        else:
            stage, block, idx, kind = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            prefix = f"layer{stage - 1}.{block - 1}."
            conv, bn = (
                (prefix + "downsample.0", prefix + "downsample.1")
                if idx == "0"
                else (prefix + f"conv{idx}", prefix + f"bn{idx}")
            )
        if kind == "conv":
            state[conv + ".weight"] = torch.from_numpy(weights[0].transpose(3, 2, 0, 1).copy())
            if len(weights) > 1:
                convs[bn] = weights[1]
        else:
            gamma, beta, mean, var = weights
            state[bn + ".weight"] = torch.from_numpy(gamma.copy())
            state[bn + ".bias"] = torch.from_numpy(beta.copy())
            state[bn + ".running_mean"] = torch.from_numpy(mean.copy())
            state[bn + ".running_var"] = torch.from_numpy(var + (KERAS_BN_EPS - TORCH_BN_EPS))
    for bn, bias in convs.items():
        # BN(conv(x) + b) normalises conv(x) - (mean - b): the bias moves into the mean.
        state[bn + ".running_mean"] = state[bn + ".running_mean"] - torch.from_numpy(bias)
    return state, skipped


def convert(path: str | Path, model: str, out: str | Path) -> dict:
    """Convert ``path`` for ``model`` (a registered name), check that it loads with
    ``strict=True``, and write ``out`` (safetensors; never over an existing file)."""
    from safetensors.torch import save

    from ..core.files import atomic_write_bytes
    from ..models import create_model

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if out.exists():
        raise WeightsError(f"{out} already exists; give another --out (nothing was overwritten)")
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: give a .safetensors file name")
    if path.suffix == ".ckpt":
        state, skipped = mindspore_to_torchvision(read_mindspore_ckpt(path))
        # MindSpore convolutions pad "same": asymmetric where the stride is 2.
        kwargs, framework = {"pad_mode": "same"}, "MindSpore"
    elif path.suffix in (".h5", ".hdf5", ".keras"):
        state, skipped = keras_to_torchvision(read_keras(path))
        # keras.applications' ResNet v1 strides in the first 1x1 conv of a block.
        kwargs, framework = {"stride_in_1x1": True}, "Keras"
    else:
        raise ConfigError(f"{path}: expected a MindSpore .ckpt or a Keras .h5/.keras file")
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 1000
    in_chans = int(state["conv1.weight"].shape[1]) if "conv1.weight" in state else 3
    net = create_model(model, num_classes=num_classes, in_chans=in_chans, **kwargs)
    want = net.state_dict()
    state = {k: v.to(want[k].dtype) if k in want else v for k, v in state.items()}
    missing = sorted(
        set(want) - set(state) - {k for k in want if k.endswith("num_batches_tracked")}
    )
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: its {framework} names do not make a {model}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}; is it the same architecture?"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise WeightsError(
                f"{path}: {k} has shape {tuple(v.shape)}, {model} needs {tuple(want[k].shape)}"
            )
    net.load_state_dict(state, strict=False)  # num_batches_tracked keep their zeros
    meta = {
        "resnetlab.model": model,
        "resnetlab.model_kwargs": json.dumps(kwargs),
        "resnetlab.converted_from": framework,
    }
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(out, save(tensors, metadata=meta))
    return {
        "path": str(out),
        "framework": framework,
        "tensors": len(state),
        "skipped": skipped,
        "num_classes": num_classes,
        "model_kwargs": kwargs,
    }
