"""The Hugging Face hub, the writing way: ``export --format hub`` and ``push``.

``export RUN --format hub --out DIR`` writes the folder the hub and timm expect:

- ``config.json``: timm's layout (``architecture``, ``num_classes``, ``num_features``,
  ``label_names``, ``pretrained_cfg`` with the run's input size, mean/std, interpolation and
  crop), so ``timm.create_model("local-dir:DIR")`` (or ``hf-hub:ORG/NAME`` once pushed) builds
  the model with its classes and preprocessing; a ``resnetlab`` key keeps what timm does not
  need (the resnetlab model, its kwargs, preset, temperature, thresholds);
- ``model.safetensors``: the weights under torchvision's keys, which are timm's for its ResNets;
- ``README.md``: the model card: data, classes, metrics per class, calibration,
  preprocessing, how it was trained, limits.

Architectures timm has (the ImageNet-style families) name timm's model; the CIFAR-style nets,
which timm lacks, name resnetlab's, and the same folder is read back by ``--weights DIR``.
``push RUN ORG/NAME`` uploads that folder with ``huggingface_hub``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ..artifacts.run import RunDir
from ..core.errors import ConfigError, FileConflictError, ResnetlabError, WeightsError
from ..core.files import atomic_write_bytes, atomic_write_text
from ..core.fmt import pct, shell_command
from ..data.transforms import eval_resize_size
from ..models import get_model_entry
from ..tasks import task_of
from .loading import LoadedModel, load_model

CONFIG = "config.json"
WEIGHTS = RunDir.WEIGHTS  # the hub folder keeps the run's file name
CARD = "README.md"
# model_kwargs that change only how a model is initialised or regularised, not its weights'
# names and shapes: a model built with them is still timm's architecture.
_TIMM_NEUTRAL_KWARGS = {"zero_init_residual", "init", "drop_path_rate", "drop_rate", "norm_layer"}


def timm_architecture(meta) -> str | None:
    """timm's name for the model ``meta`` describes, or None when timm has no such model
    (the CIFAR-style nets, plain nets, or kwargs that change the architecture)."""
    try:
        entry = get_model_entry(meta.model)
    except (ValueError, KeyError):
        return None
    name = getattr(entry, "timm_name", None)
    if not name or set(meta.model_kwargs) - _TIMM_NEUTRAL_KWARGS:
        return None
    if meta.model_kwargs.get("residual") is False:
        return None
    return name


def _crop_pct(size: int, resize: int) -> float:
    """timm's ``crop_pct`` that gives back ``resize`` (timm resizes to floor(size / pct))."""
    p = size / resize
    while math.floor(size / p) < resize:
        p = math.nextafter(p, 0.0)
    return p


def preprocessing(meta) -> dict[str, Any]:
    """The evaluation preprocessing of the run as numbers: resize (shorter side, then a
    center crop) for the ImageNet preset, both sides straight to the input size otherwise."""
    c, h, w = meta.input_size
    short = (meta.resize_size or eval_resize_size(h)) if meta.preset == "imagenet" else None
    return {
        "input_size": [c, h, w],
        "resize": short or h,
        "crop": "center" if short else "none (both sides resized)",
        "interpolation": meta.interpolation or "bilinear",
        "mean": list(meta.mean),
        "std": list(meta.std),
        "crop_pct": _crop_pct(h, short) if short else 1.0,
        "crop_mode": "center" if short else "squash",
    }


def hub_config(loaded: LoadedModel) -> dict[str, Any]:
    """config.json: timm's layout, with a ``resnetlab`` key of its own."""
    meta, model = loaded.meta, loaded.model
    pre = preprocessing(meta)
    arch = timm_architecture(meta)
    pretrained_cfg = {
        "tag": "resnetlab",
        "custom_load": False,
        "input_size": pre["input_size"],
        "fixed_input_size": False,
        "interpolation": pre["interpolation"],
        "crop_pct": pre["crop_pct"],
        "crop_mode": pre["crop_mode"],
        "mean": pre["mean"],
        "std": pre["std"],
        "num_classes": meta.num_classes,
        "first_conv": getattr(model, "first_conv", None) or "conv1",
        "classifier": getattr(model, "classifier_name", None) or "fc",
    }
    out: dict[str, Any] = {
        "architecture": arch or meta.model,
        "num_classes": meta.num_classes,
        "num_features": int(getattr(model, "num_features", 0)) or None,
        "global_pool": "avg",
        "label_names": list(meta.classes),
    }
    if meta.in_chans != 3:
        out["model_args"] = {"in_chans": meta.in_chans}
    out["pretrained_cfg"] = pretrained_cfg
    out["resnetlab"] = {
        "model": meta.model,
        "model_kwargs": dict(meta.model_kwargs),
        "timm": arch is not None,
        "preset": meta.preset,
        "resize_size": meta.resize_size,
        "task": meta.task or "multiclass",
        "temperature": meta.temperature,
        "thresholds": meta.thresholds,
        "resnetlab_version": meta.resnetlab_version,
    }
    return out


# ------------------------------------------------------------------------------ the card


def _evaluation(loaded: LoadedModel, evaluate: bool) -> dict:
    """The run's evaluation on its test split (else val): saved by ``evaluate`` when it was
    run, else made now into a temporary folder; {} when there is no held-out data."""
    run = loaded.run
    if run is None:
        return {}
    for split in ("test", "val"):
        saved = run.eval_dir(split) / "metrics.json"
        try:
            data = json.loads(saved.read_text(encoding="utf-8"))
            if isinstance(data.get("per_class"), dict):
                return data
        except (OSError, ValueError):
            pass
    if not evaluate or not run.has_config():
        return {}
    from ..analysis.evaluate import evaluate_run

    with tempfile.TemporaryDirectory(prefix="resnetlab-card-") as tmp:
        try:
            return evaluate_run(
                loaded, out_dir=tmp, backend="torch", precision="fp32", device="cpu", gradcam=False
            )
        except ResnetlabError:
            return {}


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def model_card(loaded: LoadedModel, config: dict, ev: dict, repo_id: str | None = None) -> str:
    """README.md of the hub folder: the model card."""
    meta = loaded.meta
    run = loaded.run
    summary = run.read_summary() if run is not None else {}
    settings = run.read_config() if run is not None and run.has_config() else {}
    arch = config["architecture"]
    timm_ok = config["resnetlab"]["timm"]
    name = repo_id or (run.name if run is not None else meta.model)
    card = _CARDS[task_of(meta).name]
    pre = preprocessing(meta)
    data = settings.get("data") or summary.get("data") or "-"
    front = [
        "---",
        f"library_name: {'timm' if timm_ok else 'resnetlab'}",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- resnetlab",
        *(["- timm"] if timm_ok else []),
    ]
    if ev:
        front += [
            "model-index:",
            f"- name: {json.dumps(name)}",
            "  results:",
            "  - task:",
            "      type: image-classification",
            "    dataset:",
            f"      name: {json.dumps(str(data))}",
            f"      type: {json.dumps(str(data))}",
            f"      split: {ev.get('split', 'test')}",
            "    metrics:",
            f"    - type: {card['metric']}",
            f"      value: {float(ev.get(task_of(meta).score) or 0.0):.4f}",
        ]
    front.append("---")
    lines = [*front, "", f"# {name}", ""]
    kind = card["kind"]
    lines.append(
        f"A {meta.model} {kind} classifier for {meta.num_classes} classes, trained "
        f"with [resnetlab](https://pypi.org/project/resnetlab/) on `{data}`."
    )
    lines += ["", "## Use it", ""]
    if timm_ok:
        lines += [
            "```python",
            "import timm, torch",
            "from PIL import Image",
            "",
            f'model = timm.create_model("hf-hub:{repo_id or "ORG/NAME"}", pretrained=True)'
            "  # or local-dir:FOLDER",
            "model.eval()",
            "cfg = timm.data.resolve_data_config({}, model=model)",
            "transform = timm.data.create_transform(**cfg)",
            'x = transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)',
            "probs = model(x).softmax(-1)"
            + (f"  # calibrated: model(x) / {meta.temperature:.4g}" if meta.temperature else ""),
            "labels = model.pretrained_cfg['label_names']",
            "```",
            "",
        ]
    else:
        lines += [
            f"timm has no `{arch}` (a CIFAR-style ResNet); resnetlab reads this folder:",
            "",
            "```bash",
            shell_command(
                "resnetlab",
                "train",
                "--model",
                meta.model,
                *(
                    [
                        "--model-kwargs",
                        *[f"{k}={json.dumps(v)}" for k, v in meta.model_kwargs.items()],
                    ]
                    if meta.model_kwargs
                    else []
                ),
                "--weights",
                "FOLDER",
                "--data",
                "DATA",
            ),
            "```",
            "",
        ]
    lines += ["## Data", "", f"- data: `{data}`"]
    counts = summary.get("split_sizes") or {}
    if counts:
        lines.append("- images: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines += [
        f"- task: {meta.task or 'multiclass'}",
        f"- {meta.num_classes} classes: " + ", ".join(f"`{_md(c)}`" for c in meta.classes),
        "",
    ]
    lines += ["## Metrics", ""]
    if ev:
        split, n = ev.get("split", "test"), ev.get("num_samples")
        lines.append(f"On the {split} split ({n} images): {card['measured'](ev)}.")
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for c, m in ev.get("per_class", {}).items():
            lines.append(
                f"| {_md(c)} | {pct(m.get('precision'), 1)} | {pct(m.get('recall'), 1)}"
                f" | {pct(m.get('f1'), 1)} | {m.get('support', '-')} |"
            )
    else:
        lines.append("No held-out evaluation: the run had no validation or test images.")
    lines += ["", "## Calibration", ""]
    lines.append(
        card["calibration"](meta, summary)
        or "Not calibrated: the probabilities are the plain softmax."
    )
    c, h, w = pre["input_size"]
    resize = (
        f"shorter side resized to {pre['resize']}, then the center {h}x{w} cropped"
        if pre["crop_mode"] == "center"
        else f"resized to {h}x{w} (both sides)"
    )
    lines += [
        "",
        "## Preprocessing",
        "",
        f"- {'RGB' if c == 3 else 'grayscale (L)'} image, {resize}, "
        f"{pre['interpolation']} interpolation",
        "- pixels / 255, then minus mean, divided by std per channel: mean "
        + ", ".join(f"{v:.4g}" for v in pre["mean"])
        + "; std "
        + ", ".join(f"{v:.4g}" for v in pre["std"]),
        f"- timm: `pretrained_cfg` in config.json says the same (crop_pct "
        f"{pre['crop_pct']:.4f}, crop_mode {pre['crop_mode']})",
        "",
    ]
    lines += ["## Training", ""]
    if settings:
        keys = (
            "model",
            "model_kwargs",
            "weights",
            "mode",
            "epochs",
            "batch_size",
            "optimizer",
            "lr",
            "schedule",
            "warmup_epochs",
            "weight_decay",
            "label_smoothing",
            "mixup",
            "cutmix",
            "auto_augment",
            "ema_decay",
            "precision",
            "seed",
        )
        lines += [
            f"- {k}: `{_md(json.dumps(settings[k], ensure_ascii=False))}`"
            for k in keys
            if k in settings and settings[k] not in (None, [], {})
        ]
    if summary:
        lines.append(
            f"- {summary.get('epochs_completed', '-')} epochs, best at "
            f"{summary.get('best_epoch', '-')}; {summary.get('train_seconds', 0):.0f} s "
            f"on {summary.get('device', '-')} ({summary.get('precision', '-')})"
        )
    lines += ["", "## Limits", ""]
    n = ev.get("num_samples") if ev else None
    lines.append(
        f"- Measured on {n} held-out images of the same data set"
        if n
        else "- No held-out measurement"
    )
    lines[-1] += (
        "; on images from elsewhere (other cameras, lighting, backgrounds) it may do much worse."
    )
    lines.append(
        f"- It knows only its {meta.num_classes} classes: any image gets one of them"
        + card["limit"]
    )
    if n is not None and n < 100:
        lines.append(f"- {n} test images make each percentage above uncertain by several points.")
    if not timm_ok:
        lines.append(f"- timm has no `{arch}`: load it with resnetlab.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ export


def _check_out(out: Path) -> None:
    if out.is_file():
        raise FileConflictError(f"--out {out} is a file; give a folder for the hub files")
    if out.is_dir() and any(out.iterdir()):
        config = out / CONFIG
        try:
            ours = "resnetlab" in json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise FileConflictError(
                f"--out {out} holds other files; give a new or empty "
                "folder (or one a hub export wrote)"
            )


def export_hub(
    run: str | os.PathLike | LoadedModel,
    out: str | os.PathLike,
    evaluate: bool = True,
    repo_id: str | None = None,
) -> dict[str, Any]:
    """Write the hub folder of ``run`` into ``out`` (new, empty, or a previous hub export);
    ``evaluate``: evaluate the run for the card's metrics when it has no saved evaluation.
    Returns the paths, whether timm can open it, and the architecture."""
    from safetensors.torch import save

    loaded = run if isinstance(run, LoadedModel) else load_model(run)
    out = Path(out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    config = hub_config(loaded)
    state = {k: v.detach().contiguous().cpu() for k, v in loaded.model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS, save(state, metadata={"format": "pt"}))
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    ev = _evaluation(loaded, evaluate)
    atomic_write_text(out / CARD, model_card(loaded, config, ev, repo_id))
    files = [out / CONFIG, out / WEIGHTS, out / CARD]
    return {
        "path": str(out),
        "files": [str(f) for f in files],
        "bytes": sum(f.stat().st_size for f in files),
        "format": "hub",
        "architecture": config["architecture"],
        "timm": config["resnetlab"]["timm"],
        "evaluated_on": ev.get("split"),
    }


def push(
    run: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """Export ``run``'s hub folder and upload it to ``repo_id`` (``ORG/NAME``) on the Hugging
    Face hub, creating the model repo when it does not exist. Offline, or refused by the hub,
    is one ``WeightsError`` line."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"{repo_id!r}: give the hub repository as ORG/NAME (or USER/NAME)")
    from ..core.optional import require

    require("huggingface_hub", "push")
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="resnetlab-push-") as tmp:
        folder = Path(tmp) / "hub"
        r = export_hub(run, folder, repo_id=repo_id)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                repo_type="model",
                commit_message=message or "resnetlab push",
            )
        except Exception as exc:  # noqa: BLE001  the hub's errors: offline, no token, refused
            raise WeightsError(_hub_problem(exc, repo_id, folder)) from None
        r["path"] = None
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    return {**r, "repo_id": repo_id, "url": str(url)}


def _hub_problem(exc: BaseException, repo_id: str, folder: Path) -> str:
    """One line for a failed upload, with what to do."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    export = shell_command("resnetlab", "export", "RUN", "--format", "hub", "--out", "DIR")
    if "Offline" in name or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        return (
            f"cannot push to {repo_id}: the Hugging Face hub is off (HF_HUB_OFFLINE is "
            f"set); unset it when online, or copy the folder of `{export}` by hand"
        )
    offline = ("Connection", "Timeout", "NameResolution", "Max retries", "unreachable")
    if any(k in name or k in text for k in offline):
        return (
            f"cannot push to {repo_id}: the Hugging Face hub cannot be reached (offline?) "
            f"({text[:160]}); push again when online, or copy the folder of `{export}`"
        )
    if "401" in text or "403" in text or "token" in text.lower():
        return (
            f"cannot push to {repo_id}: the hub refused the token ({text[:160]}); log in "
            "with `hf auth login` or set HF_TOKEN to a token that may write there"
        )
    return f"cannot push to {repo_id}: {text[:200]}"


# what a model card says of each task: its model-index metric, the kind of classifier, the
# measures, the calibration and the limit of its answers
_CARDS = {
    "multiclass": {
        "metric": "accuracy",
        "kind": "image",
        "measured": lambda ev: (
            f"top-1 {pct(ev.get('top1'))}, top-5 {pct(ev.get('top5'))}, balanced accuracy "
            f"{pct(ev.get('balanced_accuracy'))}, macro-F1 {pct(ev.get('f1_macro'))}"
        ),
        "calibration": lambda meta, summary: (
            meta.temperature
            and (
                f"Temperature scaling on the validation split: divide the logits by "
                f"T = {meta.temperature:.4g} before the softmax (expected calibration error "
                f"{pct(summary.get('ece_before'))} -> {pct(summary.get('ece_after'))})."
            )
        ),
        "limit": ", with no 'none of these' answer.",
    },
    "multilabel": {
        "metric": "mAP",
        "kind": "multi-label",
        "measured": lambda ev: (
            f"mAP {pct(ev.get('map'))}, F1 micro {pct(ev.get('f1_micro'))}, macro "
            f"{pct(ev.get('f1_macro'))}"
        ),
        "calibration": lambda meta, summary: (
            meta.thresholds
            and (
                "A label is present when its sigmoid reaches its threshold, chosen on the "
                "validation split: "
                + ", ".join(f"`{_md(c)}` {t:.2f}" for c, t in zip(meta.classes, meta.thresholds))
                + "."
            )
        ),
        "limit": " (or none above its threshold).",
    },
}
