"""Small data sets in the original on-disk formats, built on the fly for tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[prefix] = (images, labels)
    return out


def make_cifar(folder: Path, variant: int = 10, per_batch: int = 20, seed: int = 0):
    """The python-pickle layout: data_batch_1..5/test_batch/batches.meta or train/test/meta."""
    rng = np.random.default_rng(seed)
    sub = folder / ("cifar-10-batches-py" if variant == 10 else "cifar-100-python")
    sub.mkdir(parents=True, exist_ok=True)
    key = b"labels" if variant == 10 else b"fine_labels"

    def batch(name, n):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(i % variant) for i in range(n)]
        with open(sub / name, "wb") as f:
            pickle.dump({b"data": data, key: labels, b"batch_label": name.encode()}, f, protocol=2)
        return data, labels

    if variant == 10:
        train = [batch(f"data_batch_{i}", per_batch) for i in range(1, 6)]
        test = batch("test_batch", per_batch)
        names = {b"label_names": [f"class{i}".encode() for i in range(10)]}
        meta = "batches.meta"
    else:
        train = [batch("train", per_batch * 5)]
        test = batch("test", per_batch)
        names = {b"fine_label_names": [f"c{i:03d}".encode() for i in range(100)]}
        meta = "meta"
    with open(sub / meta, "wb") as f:
        pickle.dump(names, f, protocol=2)
    return train, test


def solid(color, size=(24, 20), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def make_folder(root: Path, classes: dict[str, int], size=(40, 36), seed=0) -> Path:
    """DIR/<class>/img_k.png with a distinct colour per class (learnable, checkable)."""
    rng = np.random.default_rng(seed)
    for ci, (name, count) in enumerate(classes.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(count):
            base = np.full((size[1], size[0], 3), 40 + 60 * (ci % 4), dtype=np.uint8)
            base[..., ci % 3] = 200
            noise = rng.integers(0, 20, size=base.shape, dtype=np.uint8)
            Image.fromarray(base + noise).save(d / f"img_{k}.png")
    return root


# Multi-label: each label is a coloured patch in its own quadrant; an image carries any subset.
MULTILABEL_PATCHES = {
    "红": ((220, 30, 30), (0, 0)),
    "green": ((30, 200, 40), (0, 1)),
    "blue": ((30, 60, 230), (1, 0)),
    "yellow": ((230, 210, 20), (1, 1)),
}


def multilabel_image(labels, rng, size: int = 32) -> Image.Image:
    a = rng.integers(90, 150, size=(size, size, 3)).astype(np.uint8)
    half = size // 2
    for name in labels:
        color, (qy, qx) = MULTILABEL_PATCHES[name]
        side = int(rng.integers(half // 2, half - 1))
        y = qy * half + int(rng.integers(0, half - side))
        x = qx * half + int(rng.integers(0, half - side))
        a[y : y + side, x : x + side] = color
    return Image.fromarray(a)


def make_multilabel(
    root: Path,
    n: int = 160,
    size: int = 32,
    seed: int = 0,
    fmt: str = "csv",
    split: bool = False,
    p: float = 0.4,
) -> Path:
    """``n`` PNGs under root/images and a listing of their labels: ``labels.csv``
    (``path,labels`` with ``|`` between labels, an empty cell for none) or ``labels.jsonl``;
    ``split``: a split column (70/15/15). Returns the listing's path."""
    rng = np.random.default_rng(seed)
    names = list(MULTILABEL_PATCHES)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        labels = [c for c in names if rng.random() < p]
        path = f"images/img_{k:04d}.png"
        multilabel_image(labels, rng, size).save(root / path)
        part = "train" if k % 20 < 14 else "val" if k % 20 < 17 else "test"
        rows.append((path, labels, part))
    if fmt == "jsonl":
        import json

        listing = root / "labels.jsonl"
        listing.write_text(
            "".join(
                json.dumps(
                    {"path": p_, "labels": ls, **({"split": s} if split else {})},
                    ensure_ascii=False,
                )
                + "\n"
                for p_, ls, s in rows
            ),
            encoding="utf-8",
        )
        return listing
    listing = root / "labels.csv"
    lines = ["path,labels" + (",split" if split else "")]
    lines += [f"{p_},{'|'.join(ls)}" + (f",{s}" if split else "") for p_, ls, s in rows]
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listing
