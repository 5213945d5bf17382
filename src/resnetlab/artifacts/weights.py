"""Weights in and out, safely.

Loading never runs code: ``.safetensors`` files, or ``torch.load(weights_only=True)`` for
``.pth``/``.pt`` with no fallback to unsafe unpickling. Saving writes our bundle:
the weights as safetensors beside their ``ModelMeta`` (everything needed to rebuild and
preprocess), with the file names ``RunDir`` gives them.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.errors import WeightsError
from ..core.files import atomic_write_bytes, atomic_write_text
from .run import ModelMeta, RunDir

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def clean_state_dict(state: dict) -> dict:
    """Drop ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from keys."""
    out = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _unpickler_reason(message: str) -> str:
    """What PyTorch's safe reader objected to, without its advice to load the file unsafely."""
    text = message.split("Check the documentation")[0]
    if "WeightsUnpickler error:" in text:
        text = text.partition("WeightsUnpickler error:")[2]
    else:
        text = " ".join(p for p in text.split("\n\n") if "weights_only" not in p)
    reason = " ".join(text.split()).rstrip(".")
    return reason[:200] or "unsafe content"


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    """``torch.load`` that only reads tensors and plain values; a code-running pickle is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file (0 bytes); the save was interrupted or failed")
    try:
        with warnings.catch_warnings():
            # A pickle written with protocol 3+ makes PyTorch warn that its safe reader "might
            # not support all instructions": it either loads or is refused below, so the
            # warning tells the user nothing they can act on.
            warnings.filterwarnings(
                "ignore", message="Detected pickle protocol", category=UserWarning
            )
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused: the file holds objects other than tensors and plain values "
            f"({_unpickler_reason(str(exc))}). resnetlab never unpickles code; re-save the "
            "weights as a state_dict or .safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError):
        # PyTorch's own text here is a long reader message about zip central directories;
        # what the user needs is which file and that it is damaged.
        raise WeightsError(
            f"{path}: the file is damaged (truncated, or not a PyTorch file) and cannot be read"
        ) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from ``.safetensors`` or a torchvision-layout ``.pth`` (also our checkpoints
    and ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise WeightsError(f"{path}: no such file")
        try:
            return clean_state_dict(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path}: not a valid safetensors file ({exc})") from None
    obj = safe_torch_load(path)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    return clean_state_dict(obj)


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a pretrained first conv to ``in_chans``: 1 channel sums the RGB filters (a grey image
    then gives the response the RGB filter gave); more channels repeat and rescale."""
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // have)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (have / in_chans)


def first_conv_key(state: dict) -> str | None:
    for key in ("conv1.weight", "conv1.0.weight"):
        if key in state:
            return key
    return None


def load_into(
    model: nn.Module, state: dict, source: str, skip_classifier: bool = False, strict: bool = False
) -> dict[str, list[str]]:
    """Load ``state`` into ``model``: adapt the first conv to the model's input channels, drop
    the classifier when its shape differs (fine-tuning to new classes). Other mismatches are
    an error that lists the missing and unexpected keys.

    ``strict``: the weights of a trained model, loaded to be used as they are: nothing is
    adapted or dropped, and every key and shape must match (a classifier of another size is
    an error, never a freshly initialised head)."""
    state = clean_state_dict(state)
    own = model.state_dict()
    # Where the input conv and the classifier live (timm's pre-activation nets: stem.conv,
    # head.fc); torchvision's names otherwise.
    first = getattr(model, "first_conv", None)
    key = f"{first}.weight" if first and f"{first}.weight" in state else first_conv_key(state)
    adapted = None
    if not strict and key and key in own and state[key].shape[1] != own[key].shape[1]:
        adapted = (state[key].shape[1], own[key].shape[1])
        state[key] = adapt_first_conv(state[key], own[key].shape[1])
    head = getattr(model, "classifier_name", "fc")
    head_keys = (f"{head}.weight", f"{head}.bias")
    dropped = []
    for k in () if strict else head_keys:
        if k in state and (skip_classifier or k not in own or state[k].shape != own[k].shape):
            dropped.append(k)
            state.pop(k)
    missing = [k for k in own if k not in state and (strict or k not in head_keys)]
    unexpected = [k for k in state if k not in own]
    shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shape:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing[:10])}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}")
        if shape:
            lines.append(f"shape mismatches: {'; '.join(shape[:5])}")
        name = getattr(model, "model_name", type(model).__name__)
        raise WeightsError(f"{source}: weights do not fit {name}:\n  " + "\n  ".join(lines))
    model.load_state_dict(state, strict=False)
    return {"dropped": dropped, "adapted": adapted}


def torchvision_weights(model_name: str):
    """The torchvision ``Weights`` enum member (DEFAULT) for one of our ImageNet names."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(model_name).DEFAULT
    except (ValueError, KeyError):
        raise WeightsError(
            f"torchvision publishes no ImageNet weights for {model_name!r}; use --weights PATH"
        ) from None


def save_bundle(model: nn.Module, meta: ModelMeta, folder: str | os.PathLike) -> Path:
    """Write the weights and their metadata atomically into ``folder``; returns the weights'
    path."""
    from safetensors.torch import save

    run = RunDir(folder)
    model = unwrap_model(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(run.weights, save(state, metadata={"format": "pt"}))
    atomic_write_text(run.meta, meta.dumps())
    return run.weights


def load_bundle_meta(path: str | os.PathLike) -> dict:
    """``model.json`` as a plain mapping, defaults filled in, for scripts; resnetlab itself
    reads it as a ``ModelMeta``."""
    return ModelMeta.read(path).to_json()
