"""``hf-stream:NAME[:CONFIG]``: a Hugging Face dataset too large to load, read as a stream.

``hf:`` loads a dataset through ``datasets.load_dataset``: the whole of it is downloaded and
converted to Arrow, and its images are held in memory or written out as files. For a data
set larger than memory or disk allows twice, ``hf-stream:`` opens it with
``streaming=True`` instead and reads it once, front to back, writing each sample's encoded
bytes as they come into WebDataset shards in the user's cache
(``~/.cache/resnetlab/hf-stream/KEY/``, ``index.json`` beside them). Training then streams
those shards as ``wds:`` data (bounded memory, mid-epoch resume, DDP over ranks, unreadable
samples skipped and counted); a second run with the same dataset and split settings reads
the shards again without the hub. Nothing is decoded while writing but each image's header.

Splits are the dataset's own (``validation``/``valid``/``dev`` are ``val``). A stream cannot be
split by index: a dataset without a validation split has each training sample sent to val
with probability ``--val-ratio`` (and to test with ``--test-ratio`` when it has no test
split either), drawn from a generator seeded by ``--seed``, so the same settings give the same
splits. The training split is read through ``datasets``' own shuffle (its files in a seeded
order, a buffer of ``SHUFFLE_BUFFER`` samples), as a stream sorted by class would otherwise
give shards of one class each. Multi-label data (a sequence of ``ClassLabel``) needs ``hf:``:
a shard sample holds one class index.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..core.files import atomic_write_text
from .hf import (
    _IMAGE_NAMES,
    _LABEL_NAMES,
    SPLIT_NAMES,
    _datasets,
    _first,
    _label_feature,
    _pick,
    load_hub_dataset,
)
from .sources import DataError, Source, class_name
from .wds import SIZES_SAMPLE

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 10_000  # samples datasets' streaming shuffle holds for the training split
SHARD_BYTES = 256 << 20  # each cached shard: about 256 MiB
LOG_SECONDS = 10.0
_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnetlab" / "hf-stream"


def load_hf_stream(
    spec: str,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    multilabel: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> Source:
    """``hf-stream:SPEC`` as a Source whose splits stream from shards (see the module doc)."""
    from .wds import INDEX_NAME, load_wds_source

    where = f"hf-stream:{spec}"
    if multilabel:
        raise DataError(
            f"{where}: a streamed dataset is kept as shards, which hold one class per image; "
            f"for --task multilabel load it with hf:{spec}"
        )
    parts, image_col, label_col, classes, fingerprint = _open(spec, where)
    key = hashlib.sha256(
        json.dumps([fingerprint, val_ratio, test_ratio, seed], ensure_ascii=False).encode()
    ).hexdigest()[:16]
    folder = cache_root() / key
    if (folder / INDEX_NAME).is_file():
        log.info("%s: reading the shards written before, in %s", where, folder)
    else:
        _write(
            parts,
            image_col,
            label_col,
            classes,
            folder,
            where,
            val_ratio,
            test_ratio,
            seed,
            shard_bytes,
        )
    source = load_wds_source(str(folder))
    source.name, source.kind = where, "hf-stream"
    return source


def _open(spec: str, where: str):
    """(splits by our names, image column, label column, class names, what identifies it)."""
    ds = _datasets()
    name, _, config = spec.partition(":")
    unreachable = (
        "the hub cannot be reached ({text}); streaming reads the hub as it trains the first "
        f"time: run online once (the shards it writes are kept), or use hf:{spec} for a "
        "dataset in the Hugging Face cache"
    )
    data = load_hub_dataset(spec, where, unreachable, streaming=True)
    parts = dict(data) if isinstance(data, ds.IterableDatasetDict) else {"train": data}
    ours: dict = {}
    for split, part in parts.items():
        mine = SPLIT_NAMES.get(split.lower())
        if mine is not None and mine not in ours:
            ours[mine] = part
    if "train" not in ours:
        raise DataError(f"{where}: no train split (it has {', '.join(parts) or 'none'})")
    features = ours["train"].features
    if features is None:
        raise DataError(f"{where}: the dataset does not declare its features (columns and types)")
    image_col = _pick(features, lambda f: isinstance(f, ds.Image), _IMAGE_NAMES, "Image", where)
    label_col = _pick(
        features, lambda f: _label_feature(f) is not None, _LABEL_NAMES, "ClassLabel", where
    )
    label_feature, is_multi = _label_feature(features[label_col])
    if is_multi:
        raise DataError(
            f"{where}: {label_col!r} holds several labels per image; a streamed dataset is kept "
            f"as shards, which hold one: load it with hf:{spec} --task multilabel"
        )
    classes = [class_name(str(n)) for n in label_feature.names]
    fingerprint = [spec, config, sorted(ours), image_col, label_col, classes]
    return ours, image_col, label_col, classes, fingerprint


class _Writer:
    """One split's shards, ``{split}-NNNNNN.tar`` of about ``limit`` bytes each."""

    def __init__(self, split: str, folder: Path, limit: int) -> None:
        self.split, self.folder, self.limit = split, folder, limit
        self.shards: list[dict] = []
        self.class_counts: dict[int, int] = {}
        self.sizes: list[list[int]] = []  # (h, w) of the first SIZES_SAMPLE, for the index
        self.f = self.tar = None

    def write(self, data: bytes, ext: str, label: int, size: tuple[int, int]) -> None:
        from .wds import require_webdataset

        if self.tar is None or (
            self.shards[-1]["count"] and self.f.tell() + len(data) > self.limit
        ):
            self.close()
            self.shards.append({"file": f"{self.split}-{len(self.shards):06d}.tar", "count": 0})
            self.f = open(self.folder / self.shards[-1]["file"], "wb")  # noqa: SIM115
            self.tar = require_webdataset().TarWriter(self.f, encoder=False, mtime=0.0)
        n = sum(s["count"] for s in self.shards)
        self.tar.write({"__key__": f"{self.split}_{n:08d}", "cls": str(label).encode(), ext: data})
        self.shards[-1]["count"] += 1
        self.class_counts[label] = self.class_counts.get(label, 0) + 1
        if len(self.sizes) < SIZES_SAMPLE:
            self.sizes.append([size[1], size[0]])

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.shards[-1]["bytes"] = self.f.tell()
            self.f.close()
            self.f = self.tar = None

    @property
    def count(self) -> int:
        return sum(s["count"] for s in self.shards)


def _write(
    parts, image_col, label_col, classes, folder, where, val_ratio, test_ratio, seed, shard_bytes
) -> None:
    """Read every split of the stream once into shards in a new folder beside ``folder``,
    then move it into place (a second job writing the same one keeps the first finished)."""
    from PIL import Image

    from .wds import INDEX_FORMAT, INDEX_NAME

    ds = _datasets()
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    # Held-out splits the dataset lacks are drawn from train, as the module doc says.
    carve = {s: r for s, r in (("val", val_ratio), ("test", test_ratio)) if s not in parts and r}
    writers = {
        s: _Writer(s, partial, shard_bytes)
        for s in ("train", "val", "test")
        if s == "train" or s in parts or s in carve
    }
    rng = np.random.default_rng(seed)
    skipped: list[dict] = []
    grey = True
    started = last = time.monotonic()
    done = 0
    log.warning("%s: reading the stream once into shards in %s", where, folder)
    try:
        for split, part in parts.items():
            part = part.cast_column(image_col, ds.Image(decode=False))
            if split == "train":
                part = part.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
            for i, row in enumerate(part):
                ref = f"{split} sample {i}"
                label, cell = row.get(label_col), row.get(image_col)
                data = cell.get("bytes") if isinstance(cell, dict) else None
                if data is None and isinstance(cell, dict) and cell.get("path"):
                    try:
                        data = Path(cell["path"]).read_bytes()
                    except OSError as exc:
                        skipped.append({"path": ref, "reason": f"cannot read ({exc})"})
                        continue
                if label is None or int(label) < 0:
                    skipped.append({"path": ref, "reason": "no label (-1)"})
                    continue
                try:
                    with Image.open(io.BytesIO(data or b"")) as img:  # the header only
                        ext, mode, size = _FORMATS.get(img.format or "", "png"), img.mode, img.size
                except Exception as exc:  # noqa: BLE001  Pillow's many errors for a bad file
                    skipped.append({"path": ref, "reason": f"not an image ({_first(exc)})"})
                    continue
                grey = grey and mode in ("L", "1", "I", "I;16")
                to = split
                if split == "train" and carve:
                    u = rng.random()
                    to = next(
                        (s for s, c in zip(carve, np.cumsum(list(carve.values()))) if u < c),
                        "train",
                    )
                writers[to].write(data, ext, int(label), size)
                done += 1
                if time.monotonic() - last >= LOG_SECONDS:
                    last = time.monotonic()
                    rate = done / max(last - started, 1e-9)
                    log.warning("%s: %d samples written (%.0f/s)", where, done, rate)
    except BaseException:
        for w in writers.values():
            w.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for w in writers.values():
        w.close()
    if not writers["train"].count:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"{where}: the train split holds no usable sample")
    index = {
        "format": INDEX_FORMAT,
        "source": where,
        "kind": "hf-stream",
        "channels": 1 if grey else 3,
        "classes": classes,
        "splits": {
            s: {
                "count": w.count,
                "class_counts": [w.class_counts.get(c, 0) for c in range(len(classes))],
                "shards": w.shards,
                "sizes_sample": w.sizes,
            }
            for s, w in writers.items()
            if w.count
        },
    }
    if skipped:
        index["skipped_files"] = skipped
        log.warning(
            "%s: %d sample(s) left out, e.g. %s: %s",
            where,
            len(skipped),
            skipped[0]["path"],
            skipped[0]["reason"],
        )
    atomic_write_text(partial / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    try:
        partial.rename(folder)
    except OSError:  # another job finished the same shards first: theirs are kept
        shutil.rmtree(partial, ignore_errors=True)
    log.warning(
        "%s: %d samples in %.1f s (%s)",
        where,
        done,
        time.monotonic() - started,
        ", ".join(f"{s} {w.count}" for s, w in writers.items() if w.count),
    )
