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
