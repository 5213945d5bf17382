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

from .data import DataConfig, DataPipeline, load_source
from .errors import ConfigError
from .models import create_model, get_model_entry
from .run import ModelMeta, RunDir
from .weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsError,
    load_into,
    read_state_dict,
    safe_torch_load,
    torchvision_weights,
)


@dataclass
class LoadedModel:
    """A model ready for inference, with its metadata and where it came from."""

    model: nn.Module
    meta: ModelMeta
    source: Path  # the weights file (or URL, for torchvision's weights)
    run: RunDir | None  # the run folder, when the model came from one

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def has_run_config(self) -> bool:
        """Whether the model comes from a run folder whose configuration says what data it
        was trained on (and how that data was split)."""
        return self.run is not None and self.run.has_config()

    @property
    def home(self) -> RunDir:
        """Where files made from this model go by default (exports, evaluations): its run
        folder, else the folder of its weights file."""
        return self.run or RunDir(self.source.parent)


def _build(meta: ModelMeta, state: dict, source: str) -> nn.Module:
    model = create_model(
        meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.model_kwargs
    )
    load_into(model, state, source)
    return model.eval()


def load_model(path: str | Path) -> LoadedModel:
    """A run folder, its weights file (with the metadata beside it), or a checkpoint."""
    p = Path(path)
    if p.is_dir():
        run = RunDir(p)
        if not run.weights.is_file():
            raise WeightsError(f"{p}: no {run.WEIGHTS}; is it a run folder from `resnetlab train`?")
        loaded = load_model(run.weights)
        loaded.run = run
        return loaded
    if not p.is_file():
        raise WeightsError(f"{p}: no such run folder or model file")
    folder = RunDir(p.parent)
    if p.suffix == ".safetensors":
        meta = folder.read_meta()
        model = _build(meta, read_state_dict(p), str(p))
        return LoadedModel(model, meta, p, folder if folder.has_config() else None)
    state = safe_torch_load(p)
    if not isinstance(state, dict) or "model_meta" not in state:
        raise WeightsError(
            f"{p}: not a resnetlab checkpoint or model file; for plain weights use "
            "--model NAME --weights FILE"
        )
    meta = ModelMeta.from_json(state["model_meta"], str(p))
    weights = state["ema"] if state.get("ema") else state["model"]
    return LoadedModel(_build(meta, weights, str(p)), meta, p, folder)


def pretrained_model(name: str, weights: str) -> LoadedModel:
    """A model from weights alone (no run): ``torchvision`` or a ``.pth``/``.safetensors`` file.

    Class names come from torchvision's ImageNet metadata when the head has 1000 outputs."""
    from .weight_sources import resolve_weights

    found = resolve_weights(weights, name)
    state, source, pre = found.state, found.source, found.preprocess
    fc = state.get("fc.weight", state.get("head.fc.weight"))
    num_classes = int(fc.shape[0]) if fc is not None else 1000
    conv = state.get("conv1.weight", state.get("conv1.0.weight", state.get("stem.conv.weight")))
    in_chans = int(conv.shape[1]) if conv is not None else 3
    classes = [str(i) for i in range(num_classes)]
    if found.classes and len(found.classes) == num_classes:
        classes = list(found.classes)
    elif num_classes == 1000:
        with contextlib.suppress(WeightsError):
            classes = list(torchvision_weights(name).meta["categories"])
    size = pre.crop_size if pre else get_model_entry(name).input_size[1]
    mean, std = (list(pre.mean), list(pre.std)) if pre else (IMAGENET_MEAN, IMAGENET_STD)
    meta = ModelMeta(
        model=name, num_classes=num_classes, in_chans=in_chans, classes=classes,
        input_size=[in_chans, size, size],
        mean=list(mean)[:in_chans] if in_chans == 3 else [sum(mean) / len(mean)],
        std=list(std)[:in_chans] if in_chans == 3 else [sum(std) / len(std)],
        weights=weights, resize_size=pre.resize_size if pre else None,
        interpolation=pre.interpolation if pre else None,
    )  # fmt: skip
    return LoadedModel(_build(meta, state, source), meta, Path(source), None)


def model_on(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def run_pipeline(
    loaded: LoadedModel,
    data: str | None = None,
    batch_size: int = 64,
    max_bad_fraction: float | None = None,
    num_workers: int = 2,
) -> DataPipeline:
    """The data a model is evaluated on, preprocessed as its metadata says. Without ``data``:
    the run's own data, split exactly as in training (same ratios, seed and tolerance of
    unreadable files)."""
    meta = loaded.meta
    options = {}
    if data is None:
        if not loaded.has_run_config:
            raise ConfigError("give --data: this model file has no run folder to take it from")
        config = loaded.run.read_config()
        data = config["data"]
        keys = ("val_ratio", "test_ratio", "seed", "max_bad_fraction")
        options = {k: config[k] for k in keys if k in config}
    if max_bad_fraction is not None:
        options["max_bad_fraction"] = max_bad_fraction
    source = load_source(data, channels=meta.in_chans, task=meta.task or "multiclass", **options)
    cfg = DataConfig(
        data=data, input_size=meta.size, preset=meta.preset, mean=list(meta.mean),
        std=list(meta.std), batch_size=batch_size, num_workers=num_workers,
        in_chans=meta.in_chans, eval_resize=meta.resize_size, task=meta.task or "multiclass",
        eval_interpolation=meta.interpolation,
        # the weights' own resize is applied per file: the in-memory cache crops at 256/224
        cache="none" if meta.resize_size or meta.interpolation else "auto",
    )  # fmt: skip
    return DataPipeline(source, cfg)
