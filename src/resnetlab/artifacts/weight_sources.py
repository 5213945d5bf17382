"""``--weights`` sources and the preprocessing each set of weights was made for.

A source is ``torchvision`` (its DEFAULT weights), ``torchvision:TAG`` (e.g. ``IMAGENET1K_V1``,
``IMAGENET1K_V2``), ``hf-hub:ORG/NAME`` (a timm model on the Hugging Face hub, through
``huggingface_hub``'s cache and its offline mode), a local folder in the hub's layout
(``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), or a ``.pth`` /
``.safetensors`` file. Like torchvision's ``Weights`` objects, weights come with the
preprocessing they were trained and published with: torchvision's resnet50 ``IMAGENET1K_V2``
is evaluated at resize 232 -> crop 224 (bilinear) for its 80.858 % top-1, where ``V1`` uses
256 -> 224; timm's weights say their crop fraction and interpolation in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..core.errors import WeightsError
from .run import RunDir
from .weights import IMAGENET_MEAN, IMAGENET_STD, read_state_dict


@dataclasses.dataclass
class Preprocess:
    """How images are prepared for a set of weights at evaluation time."""

    resize_size: int  # the shorter side is resized to this ...
    crop_size: int  # ... then the centre crop_size x crop_size is taken
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_STD)


@dataclasses.dataclass
class WeightSource:
    state: dict
    source: str  # where they came from, for messages and model.json
    preprocess: Preprocess | None  # None: the weights do not say (a plain file)
    classes: list[str] | None = None


def torchvision_preprocess(weights) -> Preprocess:
    """A torchvision ``Weights`` member's evaluation transform, as numbers."""
    tf = weights.transforms()
    interp = getattr(tf.interpolation, "value", str(tf.interpolation))
    return Preprocess(
        resize_size=int(tf.resize_size[0]),
        crop_size=int(tf.crop_size[0]),
        interpolation=str(interp),
        mean=tuple(tf.mean),
        std=tuple(tf.std),
    )


def _torchvision(model: str, tag: str | None) -> WeightSource:
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(model)
    except (ValueError, KeyError):
        raise WeightsError(
            f"torchvision publishes no ImageNet weights for {model!r}; use --weights PATH"
        ) from None
    if tag is None:
        w = enum.DEFAULT
    elif tag in enum.__members__:
        w = enum[tag]
    else:
        raise WeightsError(
            f"--weights torchvision:{tag}: {model} has {', '.join(enum.__members__)}"
        )
    try:
        state = w.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:
        raise WeightsError(
            f"cannot fetch torchvision weights for {model} from {w.url} ({exc}); when offline, "
            "download the file elsewhere and pass --weights PATH"
        ) from None
    return WeightSource(
        state, w.url, torchvision_preprocess(w), list(w.meta.get("categories", [])) or None
    )


def hub_preprocess(config: dict) -> Preprocess | None:
    """timm's ``pretrained_cfg`` (in a hub ``config.json``) as numbers."""
    cfg = config.get("pretrained_cfg", config)
    size = cfg.get("test_input_size") or cfg.get("input_size")
    if not size:
        return None
    crop = int(size[-1])
    crop_pct = float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875)
    return Preprocess(
        resize_size=int(crop / crop_pct + 0.5)
        if cfg.get("crop_mode", "center") != "squash"
        else crop,
        crop_size=crop,
        interpolation=str(cfg.get("interpolation", "bilinear")),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
    )


def _hub_folder(folder: Path, source: str) -> WeightSource:
    config_file = folder / "config.json"
    try:
        config = (
            json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        )
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{config_file}: not valid JSON ({exc})") from None
    # The hub names its weights file as a run folder does.
    for name in (RunDir.WEIGHTS, "pytorch_model.bin"):
        if (folder / name).is_file():
            state = read_state_dict(folder / name)
            break
    else:
        raise WeightsError(f"{folder}: no {RunDir.WEIGHTS} or pytorch_model.bin (hub layout)")
    labels = config.get("label_names") or config.get("pretrained_cfg", {}).get("label_names")
    return WeightSource(state, source, hub_preprocess(config), list(labels) if labels else None)


def _hf_hub(repo: str) -> WeightSource:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise WeightsError(
            f"--weights hf-hub:{repo} needs the huggingface_hub package: pip install "
            "'resnetlab[hub]'"
        ) from None
    patterns = ["config.json", RunDir.WEIGHTS, "pytorch_model.bin"]
    try:
        folder = snapshot_download(repo, allow_patterns=patterns)
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"--weights hf-hub:{repo}: not in the local Hugging Face cache and the hub cannot "
            "be reached (offline, or HF_HUB_OFFLINE=1); run once online, or download the "
            "folder and pass --weights FOLDER"
        ) from None
    except Exception as exc:  # the hub's HTTP errors: unknown repo, no access
        raise WeightsError(f"--weights hf-hub:{repo}: {str(exc).splitlines()[0]}") from None
    return _hub_folder(Path(folder), f"hf-hub:{repo}")


def resolve_weights(spec: str, model: str) -> WeightSource:
    """The state_dict, preprocessing and class names that ``--weights SPEC`` names."""
    kind, _, rest = spec.partition(":")
    if spec == "torchvision" or kind == "torchvision":
        return _torchvision(model, rest or None)
    if kind == "hf-hub" and rest:
        return _hf_hub(rest)
    path = Path(os.path.expanduser(spec))
    run = RunDir(path if path.is_dir() else path.parent)
    if run.meta.is_file() and (path.is_dir() or path.name == RunDir.WEIGHTS):
        return _run_folder(run, str(path))
    if path.is_dir():
        return _hub_folder(path, str(path))
    return WeightSource(read_state_dict(path), str(path), None)


def _run_folder(run: RunDir, source: str) -> WeightSource:
    """A resnetlab run (its folder, or its model.safetensors): the weights, and the mean/std
    and evaluation resize its model.json says they were trained with."""
    from ..data.transforms import eval_resize_size

    meta = run.read_meta()
    size = meta.size
    pre = Preprocess(
        resize_size=meta.resize_size or eval_resize_size(size),
        crop_size=size,
        interpolation=meta.interpolation or "bilinear",
        mean=tuple(meta.mean),
        std=tuple(meta.std),
    )
    return WeightSource(read_state_dict(run.weights), source, pre, list(meta.classes))
