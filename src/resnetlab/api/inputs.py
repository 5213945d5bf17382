"""What ``Run.predict`` takes, turned into the model's input: paths, folders and globs, bytes,
PIL images, numpy arrays and tensors, or iterables of these."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, ImageDecodeError

# What Run.predict takes, said by every refusal.
ACCEPTED = (
    "a path (str or Path) to an image, a folder or a glob; bytes; a PIL image; a numpy uint8 "
    "array (HxW or HxWxC, C = 1, 3 or 4; NxHxW or NxHxWxC for several); a torch tensor, uint8 "
    "or float in [0, 1], CHW or NCHW (C = 1 or 3); or a list or other iterable of these"
)


def _describe(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__name__}" if not isinstance(x, str) else repr(x)


def _refuse(x: Any, why: str = "") -> ConfigError:
    what = f"{type(x).__name__}" + (f" ({why})" if why else "")
    return ConfigError(f"cannot predict on a {what}; give {ACCEPTED}")


def _gather(x: Any) -> list[tuple[str, Any]]:
    """(name, payload) for every image in ``x``, in order; a payload is a path, bytes, a
    PIL image, a uint8 (H, W, C) array or a float (C, H, W) tensor in [0, 1]."""
    from PIL import Image

    from ..inference.predict import expand_inputs

    out: list[tuple[str, Any]] = []

    def add(item: Any, depth: int) -> None:
        if isinstance(item, (str, os.PathLike)):
            text = os.fspath(item)
            if isinstance(text, bytes):
                text = os.fsdecode(text)
            for p in expand_inputs([text]):
                out.append((p, p))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            out.append((f"<bytes {len(out)}>", bytes(item)))
        elif isinstance(item, Image.Image):
            name = getattr(item, "filename", "") or f"<image {len(out)}>"
            out.append((name, item))
        elif isinstance(item, np.ndarray):
            for a in _arrays(item):
                out.append((f"<array {len(out)}>", a))
        elif isinstance(item, torch.Tensor):
            for t in _tensors(item):
                out.append((f"<tensor {len(out)}>", t))
        elif isinstance(item, dict) or not isinstance(item, Iterable) or depth > 2:
            raise _refuse(item)
        else:
            for inner in item:
                add(inner, depth + 1)

    add(x, 0)
    return out


def _arrays(a: np.ndarray) -> list[np.ndarray]:
    """The images of a numpy array: HxW, HxWxC (C = 1, 3, 4), NxHxW, NxHxWxC; uint8."""
    if a.dtype != np.uint8:
        raise _refuse(
            a,
            f"dtype {a.dtype}: numpy images are uint8, 0..255; floats in [0, 1] as a torch tensor",
        )
    if a.ndim == 2:
        return [a[:, :, None]]
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        return [a]
    if a.ndim == 3:  # N greyscale images
        return [img[:, :, None] for img in a]
    if a.ndim == 4 and a.shape[3] in (1, 3, 4):
        return list(a)
    if a.ndim == 4 and a.shape[1] in (1, 3):
        raise _refuse(
            a, f"shape {a.shape} looks NCHW: numpy images are NxHxWxC, a.transpose(0, 2, 3, 1)"
        )
    raise _refuse(a, f"shape {a.shape}")


def _tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The images of a tensor: uint8 or float in [0, 1]; CHW or NCHW with C = 1 or 3 (HxW:
    one greyscale image). uint8 ones become (H, W, C) arrays, as numpy's."""
    t = t.detach().cpu()
    if t.dtype not in (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise _refuse(t, f"dtype {t.dtype}: tensors are uint8 (0..255) or float in [0, 1]")
    if t.dim() == 2:
        t = t[None]
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise _refuse(t, f"shape {tuple(t.shape)}: tensors are CHW or NCHW")
    if t.shape[1] not in (1, 3):
        hint = (
            ", it looks channels-last: x.permute(2, 0, 1) (or (0, 3, 1, 2))"
            if t.shape[-1] in (1, 3)
            else ""
        )
        raise _refuse(
            t, f"shape {tuple(t.shape)}: tensors are CHW or NCHW with 1 or 3 channels{hint}"
        )
    if t.is_floating_point():
        t = t.float()
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
            raise _refuse(
                t,
                f"values {lo:.3g}..{hi:.3g}: a float tensor holds pixels in "
                "[0, 1], before any Normalize (already normalised?)",
            )
        return list(t)
    return [img.permute(1, 2, 0).numpy() for img in t]


def _prepare(payload: Any, predictor) -> torch.Tensor:
    """One payload as the model's input at its size: uint8 (C, H, W) through the run's
    evaluation transform (as a decoded file), or for a float tensor float (C, H, W) 0..255."""
    from PIL import Image

    from ..data.images import from_pil, open_image
    from ..inference.predict import NO_MATCH, is_stream, read_stream

    channels = predictor.channels
    if isinstance(payload, (str, bytes)):
        try:
            source = (
                read_stream(payload) if isinstance(payload, str) and is_stream(payload) else payload
            )
            return predictor.preprocess(open_image(source, channels))
        except ImageDecodeError as exc:
            import glob

            if (
                isinstance(payload, str)
                and glob.has_magic(payload)
                and not os.path.lexists(payload)
            ):
                raise ImageDecodeError(payload, NO_MATCH) from None
            raise exc
    if isinstance(payload, Image.Image):
        return predictor.preprocess(from_pil(payload, channels))
    if isinstance(payload, np.ndarray):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[payload.shape[2]]
        a = payload[:, :, 0] if mode == "L" else np.ascontiguousarray(payload)
        return predictor.preprocess(from_pil(Image.fromarray(a, mode), channels))
    return _float_input(payload, predictor)


def _float_input(x: torch.Tensor, predictor) -> torch.Tensor:
    """A float (C, H, W) image in [0, 1] as float 0..255 at the input size: its channels made
    the model's (ITU-R 601 luma for greyscale), then the evaluation resize and crop of the
    run with the same kernel in floating point (no uint8 rounding: there is none to match)."""
    from torch.nn import functional as F

    x = x * 255.0
    if x.shape[0] != predictor.channels:
        if predictor.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            x = (x * w).sum(0, keepdim=True)
        else:
            x = x.expand(3, -1, -1)
    geometry = predictor._batch_tf.eval_geometry()
    h, w = x.shape[-2:]
    new_w, new_h = geometry.resized_size(w, h)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(
            x[None], size=(new_h, new_w), mode=geometry.interpolation, antialias=True
        )[0]
        if geometry.interpolation == "bicubic":
            x = x.clamp(0, 255)
    if geometry.short_side is not None:
        top = int(round((new_h - geometry.size) / 2.0))
        left = int(round((new_w - geometry.size) / 2.0))
        x = x[:, top : top + geometry.size, left : left + geometry.size]
    return x.contiguous()


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    from ..data.transforms import stack_images

    if all(t.dtype == torch.uint8 for t in images):
        return stack_images(images)
    return torch.stack([t.float() for t in images])  # exact: uint8 values are whole floats
