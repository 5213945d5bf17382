"""Loading a trained model from what ``train`` wrote: a run folder, a model file or a checkpoint.

Every tool after training (evaluate, predict, export, report, serve) starts here, so the
preprocessing and class names always come from the model's own metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..artifacts.preprocess import attach
from ..artifacts.run import ModelMeta, RunDir
from ..artifacts.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsError,
    clean_state_dict,
    load_into,
    read_state_dict,
    safe_torch_load,
    torchvision_weights,
)
from ..core.errors import ConfigError
from ..data import DataConfig, DataPipeline, Source, load_source
from ..models import create_model, get_model_entry
from ..tasks import task_of
from .exported import is_torchscript, load_onnx, load_torchscript

log = logging.getLogger(__name__)


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
    """Weights that are not a trained resnetlab model (torchvision's, a .pth): the metadata
    was read from their shapes, and a first conv of other channels is adapted."""
    model = create_model(
        meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.model_kwargs
    )
    load_into(model, state, source)
    return attach(model, meta).eval()


def _build_trained(
    meta: ModelMeta, state: dict, weights: Path, described: str, advice: str
) -> nn.Module:
    """A trained model, exactly as saved: the model that ``described`` (model.json, or the
    checkpoint's own metadata) describes, with ``weights`` loaded strictly. Nothing is dropped
    or adapted: metadata that disagrees with the weights (classes, input channels, any other
    shape) is an error that names both, never a freshly initialised head."""
    model = create_model(
        meta.model, num_classes=meta.num_classes, in_chans=meta.in_chans, **meta.model_kwargs
    )
    state, own = clean_state_dict(state), model.state_dict()
    head = f"{getattr(model, 'classifier_name', 'fc')}.weight"
    if head in state and head in own and state[head].shape[0] != own[head].shape[0]:
        raise WeightsError(
            f"{described} says {meta.num_classes} classes but {weights} has a "
            f"{state[head].shape[0]}-output classifier ({head} {list(state[head].shape)}); "
            f"{advice}"
        )
    conv = f"{getattr(model, 'first_conv', None) or 'conv1'}.weight"
    if conv in state and conv in own and state[conv].shape[1] != own[conv].shape[1]:
        raise WeightsError(
            f"{described} says {meta.in_chans} input channel(s) but {weights} has a first "
            f"convolution for {state[conv].shape[1]} ({conv} {list(state[conv].shape)}); {advice}"
        )
    try:
        load_into(model, state, str(weights), strict=True)
    except WeightsError as exc:  # its lists of keys and shapes, on one line
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:])
        raise WeightsError(
            f"{weights} does not fit the {meta.model} that {described} describes ({detail}); "
            f"{advice}"
        ) from None
    if len(meta.classes) != meta.num_classes:
        raise WeightsError(
            f"{described} names {len(meta.classes)} classes but says num_classes "
            f"{meta.num_classes} (as {weights} has); {advice}"
        )
    return attach(model, meta).eval()


def _checkpoint_hint(folder: RunDir, used: Path) -> str:
    """What still works when ``used``, one of the run's files, is damaged or missing: the best
    checkpoint, which holds the same weights and their metadata ("" when there is none)."""
    best = folder.best_checkpoint
    if best.is_file() and used.resolve() != best.resolve():
        return f"; {best} still holds the trained model: use it in place of the run folder"
    return ""


def _mismatch_advice(folder: RunDir) -> str:
    best = folder.best_checkpoint
    other = f" or use {best}" if best.is_file() else " (or train again)"
    return f"the files do not belong together: restore {folder.META}{other}"


def _read_calibration(folder: RunDir) -> dict:
    """What the run fitted after training: ``temperature`` or ``thresholds``, from model.json
    (whose model also must be the same), else from calibration.json; empty when neither says."""
    with contextlib.suppress(WeightsError):
        m = folder.read_meta()
        return {
            "model": m.model,
            "classes": m.classes,
            "temperature": m.temperature,
            "thresholds": m.thresholds,
        }
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        c = json.loads(folder.calibration.read_text(encoding="utf-8"))
        thresholds = c.get("thresholds")
        return {
            "classes": list(thresholds) if isinstance(thresholds, dict) else None,
            "temperature": c.get("temperature"),
            "thresholds": list(thresholds.values()) if isinstance(thresholds, dict) else None,
        }
    return {}


def _with_run_calibration(meta: ModelMeta, state: dict, folder: RunDir) -> ModelMeta:
    """A checkpoint's metadata with the calibration of its run folder.

    Checkpoints are written during training; the temperature (multi-label: the thresholds) is
    fitted afterwards on the best weights and recorded in model.json and calibration.json
    only. A checkpoint that holds those weights (the best epoch's, at the end of the epoch)
    then answers as the run folder does; one of another epoch keeps its own metadata."""
    best = (state.get("best") or {}).get("epoch")
    if best is None or best != state.get("epoch") or state.get("step_in_epoch"):
        return meta
    found = _read_calibration(folder)
    if found.get("model", meta.model) != meta.model:
        return meta
    if found.get("classes") is not None and list(found["classes"]) != meta.classes:
        return meta
    task_of(meta).apply_calibration(meta, found)
    return meta


def load_model(path: str | Path) -> LoadedModel:
    """A run folder, its weights file (with the metadata beside it), or a checkpoint.

    Loading is strict: metadata that disagrees with the weights is an error naming both
    files. A checkpoint inside a run folder answers with the run's calibration."""
    p = Path(path)
    if p.is_dir():
        run = RunDir(p)
        if not run.weights.is_file():
            unfinished = _unfinished_run(run)
            if unfinished is not None:
                return unfinished
            raise WeightsError(
                f"{p}: no {run.WEIGHTS}; is it a run folder from `resnetlab "
                f"train`?{_checkpoint_hint(run, run.weights)}"
            )
        loaded = load_model(run.weights)
        loaded.run = run
        return loaded
    if not p.is_file():
        raise WeightsError(f"{p}: no such run folder or model file")
    folder = RunDir(p.parent)
    if p.suffix == ".onnx" or (p.suffix in (".ts", ".pt") and is_torchscript(p)):
        # The project's own export, with the metadata it carries; it runs as it was
        # exported (onnxruntime, or TorchScript), outside any run folder's caches.
        module, meta = load_onnx(p) if p.suffix == ".onnx" else load_torchscript(p)
        return LoadedModel(attach(module, meta), meta, p, None)
    if p.suffix == ".safetensors":
        try:
            meta, state = folder.read_meta(), read_state_dict(p)
        except WeightsError as exc:  # a damaged or missing file of the two
            raise WeightsError(f"{exc}{_checkpoint_hint(folder, p)}") from None
        model = _build_trained(meta, state, p, str(folder.meta), _mismatch_advice(folder))
        return LoadedModel(model, meta, p, folder if folder.has_config() else None)
    return _from_checkpoint(p, safe_torch_load(p), folder)


def _unfinished_run(run: RunDir) -> LoadedModel | None:
    """A run stopped before its first epoch ended (``--max-steps``, Ctrl-C, SIGTERM) has no
    model file and no best checkpoint yet, only ``checkpoint-last.pt``: its model is the
    weights of that step, used with one line saying so. None for any other folder."""
    last = run.last_checkpoint
    if run.best_checkpoint.is_file() or not last.is_file():
        return None
    state = safe_torch_load(last)
    if not isinstance(state, dict) or state.get("best", {}).get("epoch") is not None:
        return None
    step, epoch = state.get("global_step"), int(state.get("epoch") or 0) + 1
    log.warning(
        "%s: no epoch of this run has finished (it stopped at step %s of epoch %d), so it has "
        "no %s yet; using %s, the weights at that step (not validated, not calibrated)",
        run.path,
        step,
        epoch,
        run.WEIGHTS,
        last,
    )
    return _from_checkpoint(last, state, run)


def _from_checkpoint(p: Path, state, folder: RunDir) -> LoadedModel:
    if not isinstance(state, dict) or "model_meta" not in state:
        raise WeightsError(
            f"{p}: not a resnetlab checkpoint or model file; for plain weights use "
            "--model NAME --weights FILE"
        )
    meta = _with_run_calibration(ModelMeta.from_json(state["model_meta"], str(p)), state, folder)
    weights = state["ema"] if state.get("ema") else state["model"]
    advice = "the checkpoint does not hold a consistent model (damaged, or edited)"
    model = _build_trained(meta, weights, p, f"{p}'s model_meta", advice)
    return LoadedModel(model, meta, p, folder)


def pretrained_model(name: str, weights: str) -> LoadedModel:
    """A model from weights alone (no run): ``torchvision`` or a ``.pth``/``.safetensors`` file.

    Class names come from torchvision's ImageNet metadata when the head has 1000 outputs."""
    from ..artifacts.weight_sources import resolve_weights

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
        model=name,
        num_classes=num_classes,
        in_chans=in_chans,
        classes=classes,
        input_size=[in_chans, size, size],
        mean=list(mean)[:in_chans] if in_chans == 3 else [sum(mean) / len(mean)],
        std=list(std)[:in_chans] if in_chans == 3 else [sum(std) / len(std)],
        weights=weights,
        resize_size=pre.resize_size if pre else None,
        interpolation=pre.interpolation if pre else None,
    )
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
    source: Source | None = None,
) -> DataPipeline:
    """The data a model is evaluated on, preprocessed as its metadata says. Without ``data``:
    the run's own data, split exactly as in training (same ratios, seed and tolerance of
    unreadable files). ``source``: data already loaded (``data`` names it), used as it is."""
    meta = loaded.meta
    options = {}
    if source is not None:
        data = data or source.name
    elif data is None:
        if not loaded.has_run_config:
            raise ConfigError("give --data: this model file has no run folder to take it from")
        config = loaded.run.read_config()
        data = config["data"]
        keys = ("val_ratio", "test_ratio", "seed", "max_bad_fraction", "exclude", "relabel")
        options = {k: config[k] for k in keys if k in config}
    if max_bad_fraction is not None:
        options["max_bad_fraction"] = max_bad_fraction
    curate = {k: options.pop(k, None) for k in ("exclude", "relabel")}
    if source is None:
        source = load_source(
            data, channels=meta.in_chans, task=meta.task or "multiclass", **options
        )
    if any(curate.values()):  # the images and labels the run was trained and tested with
        from ..data.curate import apply_curation

        source = apply_curation(source, **curate)
    cfg = DataConfig(
        data=data,
        input_size=meta.size,
        preset=meta.preset,
        mean=list(meta.mean),
        std=list(meta.std),
        batch_size=batch_size,
        num_workers=num_workers,
        in_chans=meta.in_chans,
        eval_resize=meta.resize_size,
        task=meta.task or "multiclass",
        eval_interpolation=meta.interpolation,
        # the weights' own resize is applied per file: the in-memory cache crops at 256/224
        cache="none" if meta.resize_size or meta.interpolation else "auto",
    )
    return DataPipeline(source, cfg)
