"""Writing WebDataset tar shards from any data resnetlab reads (``resnetlab shard``).

One series of shards per split (``train-000000.tar``, ``val-000000.tar``, ...), each sample
``KEY.cls`` (the class index as text) and the image: the original file's bytes where there is
a file (folders, CSV lists), else a PNG (MNIST, CIFAR, digits). The training split is written
in a seeded random order, so each shard holds a mix of classes (a reader's shuffle buffer
only mixes within a window). ``index.json`` (class names, channels, the samples in each shard,
the training split's mean/std) is written last: a folder with an index holds complete shards.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import torch
from PIL import Image

from ..core.errors import DataError, FileConflictError
from ..core.files import atomic_write_text
from ..core.fmt import shell_command
from .load import load_source
from .pipeline import STATS_SAMPLE
from .sources import Source, Split
from .stats import channel_stats
from .wds import INDEX_FORMAT, INDEX_NAME, SIZES_SAMPLE, require_webdataset

log = logging.getLogger(__name__)

# Per member, the tar header (512 bytes) plus padding to a 512-byte block.
TAR_OVERHEAD = 1024
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes from ``1GB``, ``500MB``, ``64k``, ``1.5GiB`` or a plain number. Units are powers
    of 1024 (1GB = 2**30 bytes) whatever their spelling, as ``write_shards``'s default."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if m is None:
            raise DataError(f"size {text!r} is not a number of bytes like 1GB, 500MB or 64KB")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 1:
        raise DataError(f"size {text!r} must be at least 1 byte")
    return value


def _encoded(split: Split, i: int, channels: int) -> tuple[bytes, str]:
    """The image ``i`` of a split as stored bytes and their extension."""
    if split.paths is not None:
        path = split.paths[i]
        try:
            return path.read_bytes(), path.suffix.lower().lstrip(".")
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    a = split.images[i]  # (C, H, W) uint8
    img = (
        Image.fromarray(a[0].numpy(), "L")
        if channels == 1
        else Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB")
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), "png"


def _sizes_sample(split: Split, order: list[int]) -> list[list[int]]:
    """(h, w) of up to SIZES_SAMPLE images of a split, for the index: what a new run chooses
    its input size from, and what ``stats`` reports, without decoding the shards."""
    if split.images is not None:
        h, w = split.images.shape[-2:]
        return [[int(h), int(w)]] * min(len(split), SIZES_SAMPLE)
    sizes = split.sizes or []
    return [list(map(int, sizes[i])) for i in order[:SIZES_SAMPLE] if i < len(sizes)]


def _write_split(
    name: str, split: Split, channels: int, out: Path, limit: int, order: list[int]
) -> list[dict]:
    """One split as ``{name}-NNNNNN.tar`` files of at most ``limit`` bytes (a single sample
    bigger than that gets a shard of its own); their entries for the index."""
    wds = require_webdataset()
    shards: list[dict] = []
    f = writer = None

    def close() -> None:
        if writer is not None:
            writer.close()
            shards[-1]["bytes"] = f.tell()
            f.close()

    try:
        for k, i in enumerate(order):
            data, ext = _encoded(split, i, channels)
            size = len(data) + 2 * TAR_OVERHEAD
            if writer is None or (shards[-1]["count"] and f.tell() + size + 1024 > limit):
                close()
                shards.append({"file": f"{name}-{len(shards):06d}.tar", "count": 0})
                f = open(out / shards[-1]["file"], "wb")  # noqa: SIM115 (closed by close())
                # A fixed mtime: the same data gives byte-identical shards.
                writer = wds.TarWriter(f, encoder=False, mtime=0.0)
            label = str(int(split.labels[i])).encode("ascii")
            writer.write({"__key__": f"{name}_{k:08d}", "cls": label, ext: data})
            shards[-1]["count"] += 1
    finally:
        close()
    return shards


def write_shards(
    source: Source | str, out_dir: str | Path, shard_size_bytes: int = 1 << 30, seed: int = 0
) -> dict:
    """Write ``source`` (a Source or a DATA string) as WebDataset shards in ``out_dir``, one
    series per split, and their ``index.json``; returns the index. ``out_dir`` must be new or
    empty; ``seed`` orders the training split."""
    if isinstance(source, str):
        source = load_source(source)
    if any(s.streamed for s in source.splits.values()):
        raise DataError(f"{source.name} is already shards; read it as it is")
    limit = parse_size(shard_size_bytes)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileConflictError(f"{out} already exists and is not an empty folder; pick another")
    out.mkdir(parents=True, exist_ok=True)
    index: dict = {
        "format": INDEX_FORMAT,
        "source": source.name,
        "kind": source.kind,
        "channels": source.channels,
        "classes": list(source.classes),
        "splits": {},
    }
    for name, split in source.splits.items():
        order = list(range(len(split)))
        if name == "train":
            order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
            order = order.tolist()
        shards = _write_split(name, split, source.channels, out, limit, order)
        counts = torch.bincount(split.labels, minlength=len(source.classes))
        index["splits"][name] = {
            "count": len(split),
            "class_counts": counts.tolist(),
            "shards": shards,
            "sizes_sample": _sizes_sample(split, order),
        }
        log.info("%s: %d samples in %d shard(s)", name, len(split), len(shards))
    if "train" in source.splits:
        train = source.splits["train"]
        if not train.in_memory and len(train) > STATS_SAMPLE:
            g = torch.Generator().manual_seed(seed)
            train = train.subset(torch.randperm(len(train), generator=g)[:STATS_SAMPLE])
        mean, std = channel_stats([train], source.channels)
        index["train_stats"] = {"mean": mean, "std": std}
    if source.bad_files:
        index["skipped_files"] = [{"path": b.path, "reason": b.reason} for b in source.bad_files]
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return index


def format_index(index: dict, out) -> str:
    """What ``resnetlab shard`` prints: per split the images, shards and size; then the next
    command."""
    lines = []
    for name, split in index["splits"].items():
        mib = sum(s["bytes"] for s in split["shards"]) / 2**20
        lines.append(
            f"{name:5} {split['count']:>9,} images in {len(split['shards']):>5,} "
            f"shard(s), {mib:,.1f} MiB"
        )
    lines.append(
        f"wrote {len(index['classes'])} classes and the counts to {out}/index.json; "
        "train with: " + shell_command("resnetlab", "train", "--data", f"wds:{out}")
    )
    return "\n".join(lines)
