"""Hugging Face datasets: ``hf:NAME[:CONFIG]`` (the hub, or its cache offline; a local folder
of parquet/arrow/image files works too) and ``hf-disk:PATH`` (``Dataset.save_to_disk``).

The image column is the dataset's ``Image`` feature (the one named ``image``/``img`` when it
has several); the labels are its ``ClassLabel`` column, with its names, or a sequence of
``ClassLabel`` for multi-label data (``--task multilabel``). The dataset's own splits are
kept (``validation``/``valid``/``dev`` are resnetlab's ``val``); a dataset without one has it
carved from train with ``--val-ratio`` (a dataset with only train: test too, ``--test-ratio``).

Images of one size are held in memory as one uint8 tensor, as MNIST and CIFAR are; images of
several sizes are written once, as the files they came as, to the user's cache
(``~/.cache/resnetlab/hf/FINGERPRINT/``) and read from there like a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..tasks import task_of
from .sources import DataError, Source, Split, carve_val, class_name, stratified_split

log = logging.getLogger(__name__)

# The dataset's split names -> resnetlab's
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_IMAGE_NAMES = ("image", "img", "images", "picture", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category")


def _datasets():
    from ..core.optional import require

    return require("datasets", "--data hf:")


def _open(kind: str, spec: str):
    """The DatasetDict (or Dataset) ``hf:NAME[:CONFIG]`` / ``hf-disk:PATH`` names."""
    ds = _datasets()
    if kind == "hf-disk":
        path = Path(os.path.expanduser(spec))
        if not path.exists():
            raise DataError(
                f"hf-disk:{spec}: no such folder (a folder that "
                "Dataset.save_to_disk or DatasetDict.save_to_disk wrote)"
            )
        try:
            return ds.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"hf-disk:{spec}: not a saved dataset ({_first(exc)})") from None
    unreachable = (
        "not in the Hugging Face cache and the hub cannot be reached ({text}); load it once "
        "online, or save it with save_to_disk and use hf-disk:PATH"
    )
    return load_hub_dataset(spec, f"hf:{spec}", unreachable)


def load_hub_dataset(spec: str, where: str, unreachable: str, **kwargs):
    """``datasets.load_dataset`` of ``NAME[:CONFIG]`` (a local folder too), with the hub
    switched off when it cannot be reached; its errors as one ``DataError`` naming
    ``where``, ``unreachable`` (with ``{text}``, the first line of the error) when the hub
    could not be reached."""
    ds = _datasets()
    name, _, config = spec.partition(":")
    if Path(os.path.expanduser(name)).exists():
        name = os.path.expanduser(name)
    offline = _offline()
    try:
        with _hub_mode(offline):
            return ds.load_dataset(name, config or None, **kwargs)
    except Exception as exc:  # noqa: BLE001  the hub's and the builders' own errors
        text = _first(exc)
        if offline or "onnect" in text or "offline" in text.lower() or "resolve" in text:
            raise DataError(f"{where}: {unreachable.format(text=text[:160])}") from None
        raise DataError(f"{where}: {text[:200]}") from None


def _offline() -> bool:
    """Whether to read the Hugging Face cache only: the environment says so now (the hub's
    own libraries read it once, at import), or the hub cannot be reached at all, so that an
    offline machine gets its one line at once instead of after the hub's retries."""
    if any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return True
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError:
        return True
    return False


@contextlib.contextmanager
def _hub_mode(offline: bool):
    """The hub's and datasets' offline switches set for one call (and their retry
    warnings kept off stderr); both are put back afterwards."""
    import logging

    from datasets import config as ds_config
    from huggingface_hub import constants as hub_constants

    saved = (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE)
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    if offline:
        hub_constants.HF_HUB_OFFLINE = ds_config.HF_HUB_OFFLINE = True
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE = saved
        hub_log.setLevel(level)


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _pick(features, want, names, what: str, spec: str) -> str:
    found = [k for k, f in features.items() if want(f)]
    if not found:
        have = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
        raise DataError(f"{spec}: no {what} column (it has {have})")
    for n in names:
        if n in found:
            return n
    return found[0]


def _label_feature(f):
    """(ClassLabel, multilabel) of a column, or None."""
    ds = _datasets()
    if isinstance(f, ds.ClassLabel):
        return f, False
    inner = getattr(f, "feature", None)
    if isinstance(f, (ds.Sequence, getattr(ds, "List", ds.Sequence))) and isinstance(
        inner, ds.ClassLabel
    ):
        return inner, True
    if isinstance(f, list) and len(f) == 1 and isinstance(f[0], ds.ClassLabel):
        return f[0], True
    return None


def load_hf_source(
    kind: str,
    spec: str,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    channels: int | None = None,
    multilabel: bool = False,
) -> Source:
    """A Hugging Face dataset as a ``Source`` (see the module's doc)."""
    ds = _datasets()
    quiet = ds.is_progress_bar_enabled()
    if quiet:  # its bars for casts and loads, on top of resnetlab's own lines
        ds.disable_progress_bars()
    try:
        return _load(kind, spec, val_ratio, test_ratio, seed, channels, multilabel)
    finally:
        if quiet:
            ds.enable_progress_bars()


def _load(kind, spec, val_ratio, test_ratio, seed, channels, multilabel) -> Source:
    ds = _datasets()
    where = f"{kind}:{spec}"
    data = _open(kind, spec)
    parts = dict(data) if isinstance(data, ds.DatasetDict) else {"train": data}
    if not parts:
        raise DataError(f"{where}: the dataset has no splits")
    features = next(iter(parts.values())).features
    image_col = _pick(features, lambda f: isinstance(f, ds.Image), _IMAGE_NAMES, "Image", where)
    label_col = _pick(
        features,
        lambda f: _label_feature(f) is not None,
        _LABEL_NAMES,
        "ClassLabel (or sequence of ClassLabel)",
        where,
    )
    label_feature, is_multi = _label_feature(features[label_col])
    held, asked = task_of(is_multi), task_of(multilabel)
    if held is not asked:
        raise DataError(f"{where}: {label_col!r} {held.column_holds}")
    classes = [class_name(str(n)) for n in label_feature.names]
    splits: dict[str, Split] = {}
    skipped = []
    for name, part in parts.items():
        ours = SPLIT_NAMES.get(name.lower())
        if ours is None or ours in splits:
            skipped.append(name)
            continue
        splits[ours] = _split(part, image_col, label_col, len(classes), is_multi, where, name)
    if skipped:
        log.warning(
            "%s: splits %s left out (resnetlab uses train, val, test)", where, ", ".join(skipped)
        )
    if "train" not in splits:
        raise DataError(f"{where}: no train split (it has {', '.join(parts)})")
    if len(splits) == 1:  # one split only: held-out images from it, as for a single folder
        train = splits["train"]
        idx = stratified_split(train.labels, {"val": val_ratio, "test": test_ratio}, seed)
        splits = {k: train.subset(v) for k, v in idx.items()}
    else:
        splits = carve_val(splits, val_ratio, seed)
    channels = channels or max(_channels(s) for s in splits.values())
    return Source(where, "hf", classes, splits, channels=channels, multilabel=is_multi)


def _channels(split: Split) -> int:
    if split.images is not None:
        return int(split.images.shape[1])
    return 3


def _split(
    part, image_col: str, label_col: str, num_classes: int, multi: bool, where: str, name: str
) -> Split:
    """One split: labels, and images in memory (one size) or as cached files (several)."""
    from PIL import Image as PILImage

    ds = _datasets()
    raw = part.cast_column(image_col, ds.Image(decode=False))
    labels_raw = raw[label_col]
    if multi:
        labels = torch.zeros(len(labels_raw), num_classes)
        for i, row in enumerate(labels_raw):
            for j in row:
                labels[i, int(j)] = 1.0
    else:
        if any(v is None or int(v) < 0 for v in labels_raw):
            raise DataError(
                f"{where}: split {name!r} has images without a label (-1); "
                "resnetlab trains on labelled images only"
            )
        labels = torch.tensor([int(v) for v in labels_raw], dtype=torch.long)
    cells = raw[image_col]
    blobs = []
    for i, cell in enumerate(cells):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None and isinstance(cell, dict) and cell.get("path"):
            data = Path(cell["path"]).read_bytes()
        if data is None:
            raise DataError(f"{where}: image {i} of split {name!r} has neither bytes nor path")
        blobs.append(data)
    heads = []
    for data in blobs:
        with PILImage.open(io.BytesIO(data)) as img:
            heads.append((img.size, img.mode, img.format))
    sizes = {h[0] for h in heads}
    if len(sizes) == 1 and blobs:
        modes = {h[1] for h in heads}
        mode = "L" if modes <= {"L", "1", "I", "I;16"} else "RGB"
        arrays = []
        for data in blobs:
            with PILImage.open(io.BytesIO(data)) as img:
                arrays.append(np.asarray(img.convert(mode)))
        a = np.stack(arrays)
        a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)
        return Split(labels=labels, images=torch.from_numpy(np.ascontiguousarray(a)))
    folder = _cache_folder(part, name)
    paths = []
    for i, (data, head) in enumerate(zip(blobs, heads)):
        ext = {
            "JPEG": ".jpg",
            "PNG": ".png",
            "WEBP": ".webp",
            "BMP": ".bmp",
            "GIF": ".gif",
            "TIFF": ".tif",
        }.get(head[2] or "", ".png")
        p = folder / f"{i:07d}{ext}"
        if not p.is_file():
            from ..core.files import atomic_write_bytes

            atomic_write_bytes(p, data)
        paths.append(p)
    return Split(labels=labels, paths=paths, sizes=[(h[0][1], h[0][0]) for h in heads])


def _cache_folder(part, name: str) -> Path:
    """Where a split of images of several sizes is kept as files: keyed by the dataset's
    fingerprint (its content and every transform applied), so a changed dataset never reads
    another's files."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = (
        getattr(part, "_fingerprint", None)
        or hashlib.sha256(repr(part).encode("utf-8")).hexdigest()[:16]
    )
    folder = Path(base) / "resnetlab" / "hf" / str(key) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder
