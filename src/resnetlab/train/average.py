"""``resnetlab average RUN... --out RUN2``: the uniform average of compatible models (runs,
model files or checkpoints), saved as a run folder that predict, evaluate, export and serve
load.

The weights of fine-tuned models that share their start average into one model, a "model
soup" (Wortsman et al. 2022, arXiv:2203.05482: the uniform soup); checkpoints of one run along
its last epochs average as SWA's do (timm's ``avg_checkpoints.py``). Every parameter is the
mean of the members' (computed in float64, stored in the members' dtype).

BatchNorm statistics: ``--bn recompute`` measures them again for the averaged weights on the
training images, as ``train --swa-epochs`` does (``swa.measure_bn``: one pass over the training
split as evaluation sees it, in batches of the run's --batch-size; the members' statistics do
not describe an average of their weights). ``--bn average`` takes the mean of the members'
running statistics, which costs nothing and needs no data, but is only an approximation.
``auto`` (the default) recomputes when the training data is known (the first member's run
folder names it, or --data does) and averages otherwise; a line says which was done.

The members must be the same model: architecture and its settings, classes in the same order,
input size, channels, normalisation (to 0.01: runs split with other seeds measure their mean
and std on other images; the first member's are kept) and task; anything else is one line
naming the first difference. The average is calibrated afresh (temperature, multi-label
thresholds) on the validation split when there is one, and its validation and test top-1 are
written to ``summary.json`` beside each member's.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from ..artifacts.run import RunDir
from ..artifacts.weights import save_bundle
from ..core.device import resolve_device
from ..core.errors import ConfigError, FileConflictError
from ..core.files import atomic_write_text, writing
from ..inference.loading import LoadedModel, load_model, model_on, run_pipeline
from ..tasks import task_of
from .calibration import calibrate_run, fit_thresholds, validation_logits
from .swa import batch_norms, measure_bn, training_images

BN_MODES = ("auto", "recompute", "average")
# What must agree between members, as ModelMeta names it.
_SAME = (
    "model",
    "model_kwargs",
    "classes",
    "input_size",
    "in_chans",
    "mean",
    "std",
    "preset",
    "task",
    "resize_size",
    "interpolation",
)


def _check_compatible(members: list[tuple[str, LoadedModel]]) -> None:
    (first, a), rest = members[0], members[1:]
    for name, b in rest:
        for key in _SAME:
            va, vb = getattr(a.meta, key), getattr(b.meta, key)
            if key in ("mean", "std") and _close(va, vb):
                continue  # statistics of splits made with other seeds: the first's are kept
            if va != vb:
                shown = (lambda v: f"{len(v)} classes {v[:4]}...") if key == "classes" else repr
                raise ConfigError(
                    f"{name} cannot be averaged with {first}: its {key} is {shown(vb)}, the "
                    f"other's {shown(va)} (the models averaged must be the same model, trained "
                    "on the same classes)"
                )
        sa, sb = a.model.state_dict(), b.model.state_dict()
        for k in sa:
            if k not in sb or sa[k].shape != sb[k].shape:
                raise ConfigError(f"{name} cannot be averaged with {first}: {k} differs")


def _close(a: list[float], b: list[float], tol: float = 0.01) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def _bn_buffers(model: torch.nn.Module) -> set[str]:
    names = {id(m): n for n, m in model.named_modules()}
    out = set()
    for m in batch_norms(model):
        prefix = names[id(m)]
        out |= {f"{prefix}.{b}" if prefix else b for b, _ in m.named_buffers(recurse=False)}
    return out


def average_state(states: list[dict[str, torch.Tensor]], skip: set[str] = frozenset()) -> dict:
    """The mean of each floating-point tensor (in float64, then the members' dtype); integer
    ones (BatchNorm's batch counters) and those in ``skip`` are the first member's."""
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point() and k not in skip:
            total = torch.zeros_like(v, dtype=torch.float64)
            for s in states:
                total += s[k].to(torch.float64)
            out[k] = (total / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _claim(out: Path) -> RunDir:
    with writing(out, "create the folder"):
        out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    if not run.is_empty():
        raise FileConflictError(
            f"--out {out} already holds files; give a new folder (nothing is overwritten)"
        )
    return run


def _top1(model, data, device, split: str) -> float | None:
    if split not in data.source.splits or not len(data.source.splits[split]):
        return None
    logits, labels = validation_logits(model, data, device, "fp32", split)
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else None


def average_runs(
    sources: list[str | os.PathLike],
    out: str | os.PathLike,
    bn: str = "auto",
    data: str | None = None,
    device: str | None = "auto",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Average ``sources`` (run folders, model files, checkpoints) into the run folder
    ``out``; returns the summary written there, with ``bn_note`` saying how its BatchNorm
    statistics were made."""
    if bn not in BN_MODES:
        raise ConfigError(f"--bn {bn!r} is not one of {', '.join(BN_MODES)}")
    if len(sources) < 2:
        raise ConfigError("average needs at least two runs, model files or checkpoints")
    members = [(str(s), load_model(s)) for s in sources]
    _check_compatible(members)
    first = members[0][1]
    config = first.run.read_config() if first.has_run_config else None
    known = data is not None or config is not None
    if bn == "recompute" and not known:
        raise ConfigError(
            f"--bn recompute measures on the training images: {members[0][0]} has "
            "no run folder naming its data; give --data DATA"
        )
    recompute = bn == "recompute" or (bn == "auto" and known)
    run = _claim(Path(out))
    dev = resolve_device(device or "auto")
    model = copy.deepcopy(first.model)
    skip = _bn_buffers(model) if recompute else set()
    model.load_state_dict(average_state([m.model.state_dict() for _, m in members], skip))
    model = model_on(model, dev).eval()
    pipe = None
    if known:
        size = batch_size or (config or {}).get("batch_size") or 64
        pipe = run_pipeline(first, data, batch_size=size, num_workers=0)
    if recompute:
        if "train" not in pipe.source.splits or not len(pipe.source.splits["train"]):
            raise ConfigError(
                f"{pipe.cfg.data} has no training images to measure BatchNorm "
                "statistics on; give --data with them, or --bn average"
            )
        seen = measure_bn(model, training_images(pipe, dev))
        bn_note = (
            f"BatchNorm statistics measured again on the {seen} training images of "
            f"{pipe.cfg.data} (one pass, as evaluated)"
        )
    else:
        why = "--bn average" if bn == "average" else "no training data known (give --data)"
        bn_note = f"BatchNorm statistics averaged over the members ({why}): an approximation"
    meta = first.meta
    meta.temperature, meta.thresholds = None, None
    meta.weights = None
    meta.extra = {**meta.extra, "averaged_from": [name for name, _ in members]}
    save_bundle(model, meta, run.path)
    if config is not None:
        saved = dict(config, **({"data": data} if data else {}))
        atomic_write_text(run.config, yaml.safe_dump(saved, sort_keys=False, allow_unicode=True))
    summary: dict[str, Any] = {
        "model": meta.model,
        "data": pipe.cfg.data if pipe else None,
        "classes": meta.classes,
        "averaged_from": [name for name, _ in members],
        "bn": "recomputed" if recompute else "averaged",
        "bn_note": bn_note,
        "run_dir": str(run.path),
    }
    if pipe is not None:
        summary.update(_MEASURES[task_of(meta).name](model, members, pipe, dev, run, meta))
    atomic_write_text(run.summary, json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def _measure_multiclass(model, members, pipe, dev, run, meta) -> dict:
    """Single-label: each member's top-1 and the soup's, then the soup's temperature."""
    found = {
        "member_val_top1": [
            _top1(model_on(m.model, dev).eval(), pipe, dev, "val") for _, m in members
        ],
        "member_test_top1": [
            _top1(model_on(m.model, dev).eval(), pipe, dev, "test") for _, m in members
        ],
        "best_val_top1": _top1(model, pipe, dev, "val"),
        "test_top1": _top1(model, pipe, dev, "test"),
    }
    return {**found, **(calibrate_run(model, pipe, dev, "fp32", run, meta) or {})}


def _measure_multilabel(model, members, pipe, dev, run, meta) -> dict:
    """Multi-label: the soup's per-class thresholds on validation."""
    return fit_thresholds(model, pipe, dev, "fp32", run, meta) or {}


# what an average measures of itself, by task
_MEASURES = {"multiclass": _measure_multiclass, "multilabel": _measure_multilabel}
