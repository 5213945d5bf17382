"""Data held in memory as data sets: an ``(images, labels)`` pair or a torch ``Dataset`` of
``(image, label)``, for ``resnetlab.fit(data=...)`` in a notebook.

Images of one size become a uint8 tensor split as a single folder is (stratified, seeded
``val_ratio``/``test_ratio``), registered under ``memory:KEY`` (``KEY``: a hash of the pixels
and labels) so that every part of the library that reads a ``DATA`` string reads it like any
other; the run's ``config.yaml`` says ``data: memory:KEY``. Images of several sizes are
written once as PNG files (lossless) in an ImageFolder layout under the user's cache folder,
and that folder is the ``DATA``: it trains, evaluates and re-runs from the command line as
any folder does.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import ConfigError, DataError
from .images import from_pil
from .sources import Source, Split, class_name, stratified_split

PREFIX = "memory:"
# Held by this process, by key: what ``load_source("memory:KEY")`` returns.
_SOURCES: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]] = {}

ACCEPTED_IMAGES = (
    "images as a uint8 array or tensor (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or "
    "3, or a list of PIL images or uint8 arrays"
)


def _one_image(img, where: str) -> np.ndarray:
    """One image as a uint8 (H, W, C) array, C = 1 or 3 (alpha composited, any mode)."""
    if isinstance(img, Image.Image):
        img = from_pil(img, 1 if img.mode in ("L", "LA", "I", "I;16", "F", "1") else 3)
        a = np.asarray(img)
    elif isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.is_floating_point():  # torchvision's ToTensor: CHW floats in [0, 1]
            if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
                raise ConfigError(
                    f"{where}: a float tensor must hold pixels in [0, 1] (this one spans "
                    f"{float(t.min()):.3g}..{float(t.max()):.3g}: normalised already?); give "
                    "the images before Normalize"
                )
            t = (t * 255).round().to(torch.uint8)
        if t.dtype != torch.uint8:
            raise ConfigError(f"{where}: a {t.dtype} tensor; images are uint8 or floats in [0, 1]")
        if t.dim() == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
            t = t.permute(1, 2, 0)  # CHW, as torchvision gives them
        a = t.numpy()
    elif isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise ConfigError(f"{where}: a {img.dtype} array; images are uint8 (0..255)")
        a = img
    else:
        raise ConfigError(f"{where}: a {type(img).__name__}; {ACCEPTED_IMAGES}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ConfigError(f"{where}: shape {tuple(a.shape)}; {ACCEPTED_IMAGES}")
    if a.shape[2] == 4:
        a = np.asarray(from_pil(Image.fromarray(a, "RGBA"), 3))
    return np.ascontiguousarray(a)


def _batch(images) -> np.ndarray | list[np.ndarray]:
    """A stacked uint8 (N, H, W, C) array, or a list of (H, W, C) arrays of several sizes."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.is_floating_point() or images.dtype != torch.uint8:
            return [_one_image(images[i], f"image {i}") for i in range(len(images))]
        if images.dim() == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
            images = images.permute(0, 2, 3, 1)  # NCHW
        images = images.numpy()
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ConfigError(f"images: a {images.dtype} array; {ACCEPTED_IMAGES}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3, 4):
            images = images.transpose(0, 2, 3, 1)  # NCHW
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ConfigError(f"images: shape {images.shape}; {ACCEPTED_IMAGES}")
        if images.shape[-1] == 4:
            return [_one_image(a, f"image {i}") for i, a in enumerate(images)]
        return np.ascontiguousarray(images)
    if isinstance(images, (str, bytes, dict)) or not isinstance(images, Iterable):
        raise ConfigError(f"images: a {type(images).__name__}; {ACCEPTED_IMAGES}")
    return [_one_image(img, f"image {i}") for i, img in enumerate(images)]


def _labels(labels, n: int, classes: list[str] | None) -> tuple[torch.Tensor, list[str]]:
    """Class indices and class names from labels given as ints or as names."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().tolist()
    elif isinstance(labels, np.ndarray):
        labels = labels.tolist()
    elif isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise ConfigError(
            f"labels: a {type(labels).__name__}; give one label (int or name) per image"
        )
    labels = list(labels)
    if len(labels) != n:
        raise ConfigError(f"{n} images but {len(labels)} labels; give one label per image")
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in labels):
        values = [int(v) for v in labels]
        if min(values, default=0) < 0:
            raise ConfigError(f"labels: class indices are >= 0, got {min(values)}")
        if classes is None:
            classes = [str(i) for i in range(max(values, default=-1) + 1)]
        if max(values, default=-1) >= len(classes):
            raise ConfigError(f"labels: index {max(values)} but {len(classes)} class names")
        return torch.tensor(values, dtype=torch.long), [class_name(str(c)) for c in classes]
    if all(isinstance(v, str) for v in labels):
        names = [class_name(v) for v in labels]
        classes = sorted(set(names)) if classes is None else [class_name(c) for c in classes]
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise ConfigError(f"labels: {unknown[:5]} are not among the classes given")
        return torch.tensor([index[v] for v in names], dtype=torch.long), classes
    kinds = sorted({type(v).__name__ for v in labels})
    raise ConfigError(
        f"labels: all ints (class indices) or all strings (class names), got {', '.join(kinds)}"
    )


def from_dataset(dataset) -> tuple[list, list, list[str] | None]:
    """(images, labels, class names or None) of a ``Dataset`` of ``(image, label)`` items."""
    try:
        n = len(dataset)
    except TypeError:
        raise ConfigError("data: a Dataset must have a length (a map-style Dataset)") from None
    images, labels = [], []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ConfigError(f"data: item {i} of the Dataset is not an (image, label) pair")
        images.append(item[0])
        label = item[1]
        labels.append(int(label) if isinstance(label, torch.Tensor) else label)
    classes = getattr(dataset, "classes", None)
    return images, labels, list(classes) if classes is not None else None


def _key(images, labels: torch.Tensor, classes: list[str]) -> str:
    digest = hashlib.sha256()
    for a in images if isinstance(images, list) else [images]:
        digest.update(f"{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    digest.update(labels.numpy().tobytes())
    digest.update("\0".join(classes).encode())
    return digest.hexdigest()[:16]


def register(images, labels, classes: list[str] | None = None) -> str:
    """The ``DATA`` string for images and labels held in memory: ``memory:KEY`` for images of
    one size; for images of several sizes, a folder of PNG files written once (by content)."""
    batch = _batch(images)
    n = len(batch)
    if n == 0:
        raise ConfigError("data: no images")
    y, names = _labels(labels, n, classes)
    if isinstance(batch, list):
        shapes = {a.shape for a in batch}
        if len(shapes) == 1:
            batch = np.stack(batch)
        else:
            return str(_write_folder(batch, y, names))
    key = _key(batch, y, names)
    if key not in _SOURCES:
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
        _SOURCES[key] = (tensor, y, names)
    return PREFIX + key


def _write_folder(images: list[np.ndarray], labels: torch.Tensor, classes: list[str]) -> Path:
    """``images`` as PNG files in ``CACHE/memory/KEY/<class>/NNNNNN.png`` (written once)."""
    key = _key(images, labels, classes)
    # run.user_cache_dir's folder (that module sits a layer above the data)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "resnetlab" / "memory" / key
    done = root / ".complete"
    if done.is_file():
        return root
    for c in classes:
        (root / _folder_name(c)).mkdir(parents=True, exist_ok=True)
    for i, (a, y) in enumerate(zip(images, labels.tolist())):
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
        img.save(root / _folder_name(classes[y]) / f"{i:06d}.png")
    done.write_text("")
    return root


def _folder_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise ConfigError(f"class name {name!r} cannot be a folder name; give plain names")
    return name


def load_memory_source(key: str, val_ratio: float, test_ratio: float, seed: int) -> Source:
    """The data registered as ``memory:KEY`` in this process, split as a single folder is."""
    if key not in _SOURCES:
        raise DataError(
            f"memory:{key} is data that a Python process held in memory "
            "(resnetlab.fit(data=(images, labels))); this process does not hold it: pass the "
            "images again, or give DATA as a folder"
        )
    images, labels, classes = _SOURCES[key]
    ratios = {k: r for k, r in (("val", val_ratio), ("test", test_ratio)) if r > 0}
    parts = (
        stratified_split(labels, ratios, seed) if ratios else {"train": torch.arange(len(labels))}
    )
    h, w = images.shape[-2:]
    splits = {}
    for name in ("train", "val", "test"):
        if name in parts:
            idx = parts[name]
            splits[name] = Split(
                labels=labels[idx], images=images[idx], sizes=[(int(h), int(w))] * len(idx)
            )
    return Source(
        name=PREFIX + key,
        kind="memory",
        classes=list(classes),
        splits=splits,
        channels=int(images.shape[1]),
    )
