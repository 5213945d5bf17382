"""A trained model's preprocessing, written out in full: what an image must go through to
become its input, for the exports' metadata (a client reads only that), for timm's
``pretrained_cfg`` and for anyone who feeds the model by hand.

Every door into a model (``predict``, ``serve``, ``evaluate``, the evaluation during training,
an image given to ``Run.predict`` in memory) does exactly this; ``examples/onnx_client.py``
does it with Pillow and numpy alone and gets the same probabilities.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data.transforms import eval_interpolation, eval_resize_size
from ..models.base import make_pretrained_cfg
from ..tasks import task_of
from .run import ModelMeta

# Bumped when a key changes meaning; a reader checks it.
VERSION = 1


def resize_size(meta: ModelMeta) -> int | None:
    """The side the shorter side is resized to before the center crop (ImageNet preset), or
    None when both sides are resized to the input size (the small and CIFAR presets)."""
    if meta.preset != "imagenet":
        return None
    return meta.resize_size or eval_resize_size(meta.size)


def describe(meta: ModelMeta) -> dict[str, Any]:
    """The whole preprocessing of ``meta``'s model and how to read its outputs, as plain
    JSON values (``resnetlab.preprocessing`` in an ONNX file's metadata)."""
    c, h, w = meta.input_size
    short = resize_size(meta)
    out: dict[str, Any] = {
        "version": VERSION,
        # decoding: the file at full scale (no JPEG draft mode), EXIF orientation applied,
        # transparent pixels composited on white, then RGB (3 channels) or L (1: ITU-R 601)
        "decode": "full scale, EXIF orientation applied, alpha composited on white",
        "color": "RGB" if c == 3 else "L",
        "alpha_background": 255,
        # resize: shorter_side (the longer one follows, rounded down: int(size * long /
        # short)) then a center crop of input_size; both_sides: straight to input_size
        "resize": "shorter_side" if short else "both_sides",
        "resize_size": short or h,
        "interpolation": eval_interpolation(meta.interpolation),
        "resampler": "Pillow Image.resize (antialiased)",
        "crop": "center" if short else "none",
        "crop_offset": "round((resized - input) / 2)",
        "input_size": [c, h, w],
        "input_name": "input",
        "layout": "NCHW",
        "dtype": "float32",
        # the input's values: (pixel / 255 - mean[c]) / std[c] for pixels 0..255
        "pixel_range": [0, 255],
        "scale": 1 / 255,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "output": "logits",
        **task_of(meta).metadata(meta),
        # probabilities: softmax(logits / temperature); multilabel: sigmoid(logits), a label
        # present from its threshold on
        "temperature": float(meta.temperature or 1.0),
        "classes": list(meta.classes),
    }
    return out


def pretrained_cfg(meta: ModelMeta, model: nn.Module | None = None) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` of the model ``meta`` describes, so that
    ``timm.data.resolve_model_data_config(model)`` returns the run's own input size,
    mean/std, interpolation and crop (and ``label_names``, the classes)."""
    return make_pretrained_cfg(
        meta.input_size,
        mean=meta.mean,
        std=meta.std,
        interpolation=eval_interpolation(meta.interpolation),
        resize_size=resize_size(meta),
        num_classes=meta.num_classes,
        first_conv=getattr(model, "first_conv", "conv1"),
        classifier=getattr(model, "classifier_name", "fc"),
        architecture=meta.model,
        label_names=list(meta.classes),
        resnetlab_preset=meta.preset,
    )


def attach(model: nn.Module, meta: ModelMeta) -> nn.Module:
    """``model`` with the preprocessing of ``meta`` attached as timm's ``pretrained_cfg``."""
    model.pretrained_cfg = pretrained_cfg(meta, model)
    return model
