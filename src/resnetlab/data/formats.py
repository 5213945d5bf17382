"""Readers for the original on-disk formats of MNIST (IDX) and CIFAR (python pickles)."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import torch

from .sources import DataError, Source, Split, carve_val

# ----------------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_file(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not; checks magic and sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header says {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _download(fetch, what: str, url: str, by_hand: str) -> None:
    """Run torchvision's download; offline (or refused by the server) it is one line that
    names the URL and the files to place by hand, not its traceback."""
    try:
        fetch()
    except (OSError, RuntimeError) as exc:  # URLError, HTTPError, timeouts; MNIST's mirrors
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = re.sub(r"^<urlopen error (.*)>$", r"\1", lines[-1].strip())
        msg = f"--download: cannot fetch {what} from {url} ({reason}); {by_hand}"
        raise DataError(msg) from None


def load_mnist_source(folder: Path, val_ratio: float, seed: int, download: bool) -> Source:
    folders = [folder, folder / "MNIST" / "raw"]
    if download and _find_file(folders, MNIST_FILES["train"][0]) is None:
        from torchvision.datasets import MNIST

        names = ", ".join(f"{n}.gz" for pair in MNIST_FILES.values() for n in pair)
        hand = f"without a connection, fetch {names} elsewhere and place them in {folder}"

        def fetch():
            for train in (True, False):
                MNIST(str(folder), train=train, download=True)

        _download(fetch, "MNIST", MNIST.mirrors[0], hand)
    splits: dict[str, Split] = {}
    for split, (img_name, lbl_name) in MNIST_FILES.items():
        img_path, lbl_path = _find_file(folders, img_name), _find_file(folders, lbl_name)
        if img_path is None or lbl_path is None:
            missing = img_name if img_path is None else lbl_name
            raise DataError(
                f"mnist:{folder}: {missing}[.gz] not found in {folder} or {folder}/MNIST/raw; "
                "add --download to fetch MNIST"
            )
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"mnist:{folder}: {img_path.name} holds {images.shape} but {lbl_path.name} "
                f"holds {labels.shape}; they must be N images and N labels"
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"{lbl_path}: label {labels.max()} is not a digit 0-9")
        splits[split] = Split(
            labels=torch.from_numpy(labels.astype(np.int64)),
            images=torch.from_numpy(images.copy()).unsqueeze(1),
        )
    splits = carve_val(splits, val_ratio, seed)
    return Source(f"mnist:{folder}", "mnist", [str(i) for i in range(10)], splits, channels=1)


# ----------------------------------------------------------------------------------- CIFAR


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; only the few classes they need may be constructed."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python batch (holds {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_images(batch: dict, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{path}: CIFAR batch has no {exc} entry") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: expected N x 3072 images and N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar_source(
    folder: Path, variant: int, val_ratio: float, seed: int, download: bool
) -> Source:
    sub = "cifar-10-batches-py" if variant == 10 else "cifar-100-python"
    if variant == 10:
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, label_key, names_key = (
            "test_batch",
            "batches.meta",
            "labels",
            ("label_names"),
        )
    else:
        train_files, test_file, meta_file = ["train"], "test", "meta"
        label_key, names_key = "fine_labels", "fine_label_names"
    root = folder / sub if (folder / sub).is_dir() else folder
    if download and not (root / meta_file).is_file():
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if variant == 10 else CIFAR100
        hand = (
            f"without a connection, fetch {cls.filename} elsewhere and place it in {folder} "
            f"(add --download to unpack it), or unpack it there yourself ({sub}/)"
        )
        _download(
            lambda: cls(str(folder), train=True, download=True), f"CIFAR-{variant}", cls.url, hand
        )
        root = folder / sub
    missing = [n for n in [*train_files, test_file, meta_file] if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"cifar{variant}:{folder}: missing {', '.join(missing)} in {root}; "
            f"add --download to fetch CIFAR-{variant}"
        )
    meta = _read_cifar_pickle(root / meta_file)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, [])]
    if len(classes) != variant:
        raise DataError(f"{root / meta_file}: expected {variant} class names, got {len(classes)}")

    def load(names):
        parts = [_cifar_images(_read_cifar_pickle(root / n), root / n, label_key) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= variant):
            raise DataError(f"{root}: labels outside 0..{variant - 1}")
        return Split(labels=torch.from_numpy(labels), images=torch.from_numpy(images.copy()))

    splits = carve_val({"train": load(train_files), "test": load([test_file])}, val_ratio, seed)
    return Source(f"cifar{variant}:{folder}", f"cifar{variant}", classes, splits, channels=3)
