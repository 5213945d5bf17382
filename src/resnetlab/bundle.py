"""Loading a trained model from what ``train`` wrote: a run folder, a model file or a checkpoint.

Every tool after training (evaluate, predict, export, report, serve) starts here, so the
preprocessing and class names always come from the model's own metadata.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models import create_model
from .weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsError,
    load_bundle_meta,
    load_into,
    read_state_dict,
    safe_torch_load,
)


@dataclass
class LoadedModel:
    model: nn.Module
    meta: dict
    source: Path
    run_dir: Path | None  # the run folder, when the model came from one

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def _build(meta: dict, state: dict, source: str) -> nn.Module:
    model = create_model(
        meta["model"],
        num_classes=int(meta["num_classes"]),
        in_chans=int(meta["in_chans"]),
        **dict(meta.get("model_kwargs") or {}),
    )
    load_into(model, state, source)
    return model.eval()


def load_model(path: str | Path) -> LoadedModel:
    """A run folder, ``model.safetensors`` (with ``model.json`` beside it), or a checkpoint."""
    p = Path(path)
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            raise WeightsError(
                f"{p}: no model.safetensors; is it a run folder from `resnetlab train`?"
            )
        loaded = load_model(p / "model.safetensors")
        loaded.run_dir = p
        return loaded
    if not p.is_file():
        raise WeightsError(f"{p}: no such run folder or model file")
    if p.suffix == ".safetensors":
        meta = load_bundle_meta(p.with_name("model.json"))
        model = _build(meta, read_state_dict(p), str(p))
        run_dir = p.parent if (p.parent / "config.yaml").is_file() else None
        return LoadedModel(model, meta, p, run_dir)
    state = safe_torch_load(p)
    if not isinstance(state, dict) or "model_meta" not in state:
        raise WeightsError(
            f"{p}: not a resnetlab checkpoint or model file; for plain weights use "
            "--model NAME --weights FILE"
        )
    meta = state["model_meta"]
    weights = state["ema"] if state.get("ema") else state["model"]
    return LoadedModel(_build(meta, weights, str(p)), meta, p, p.parent)


def pretrained_model(name: str, weights: str) -> LoadedModel:
    """A model from weights alone (no run): ``torchvision`` or a ``.pth``/``.safetensors`` file.

    Class names come from torchvision's ImageNet metadata when the head has 1000 outputs."""
    from .weights import load_torchvision_state, torchvision_weights

    if weights == "torchvision":
        state, info = load_torchvision_state(name)
        source = info["source"]
    else:
        state, source = read_state_dict(weights), weights
    fc = state.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None else 1000
    conv = state.get("conv1.weight", state.get("conv1.0.weight"))
    in_chans = int(conv.shape[1]) if conv is not None else 3
    classes = [str(i) for i in range(num_classes)]
    if num_classes == 1000:
        with contextlib.suppress(WeightsError):
            classes = list(torchvision_weights(name).meta["categories"])
    from .models import get_model_entry

    size = get_model_entry(name).input_size[1]
    meta = {
        "model": name,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "classes": classes,
        "input_size": [in_chans, size, size],
        "mean": list(IMAGENET_MEAN)[:in_chans] if in_chans == 3 else [0.449],
        "std": list(IMAGENET_STD)[:in_chans] if in_chans == 3 else [0.226],
        "preset": "imagenet" if size >= 64 else "cifar",
        "model_kwargs": {},
        "weights": weights,
    }
    return LoadedModel(_build(meta, state, source), meta, Path(source), None)


def model_on(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
