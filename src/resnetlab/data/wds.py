"""WebDataset tar shards: find them, count them, decode their members, and plan each epoch.

``wds:DIR`` is a folder written by ``resnetlab shard`` (``train-*.tar``, ``val-*.tar``,
``test-*.tar`` and ``index.json`` with the class names and the samples in every shard);
``wds:PATTERN`` a brace pattern of tar files (``/data/train-{000000..000099}.tar``). A sample is
the tar members sharing a key: ``KEY.cls`` (the class index as text) and the image as
``KEY.jpg``, ``KEY.png``, ... (the WebDataset convention). Tar files are read with the
``webdataset`` library (``pip install resnetlab[wds]``); ``stream`` makes batches of them.

How an epoch is split (``epoch_plan``). The shards, in an order shuffled by (seed, epoch) for
training, are read as one sequence of samples; rank ``r`` of ``W`` takes a contiguous slice of
it, and within a rank each loader worker (a *lane*) takes a contiguous slice of that. The cuts
fall inside shards wherever the counts say, so uneven shard counts and sizes (3 shards over 2
ranks, a short last shard) cost nothing: every sample lands in exactly one slice. A slice that
starts inside a shard seeks to its first sample's tar header (plain ``.tar`` files), so no
member is read twice. Training gives every rank ``N // W`` samples, so every rank takes the
same number of steps, as DDP needs; the ``N % W < W`` samples that leaves over, like the
samples of a dropped short last batch, differ from epoch to epoch as the shard order does.
Evaluation gives the ranks ``N // W`` or ``N // W + 1`` samples and drops nothing, so every
sample is scored exactly once. The counts come from the index, or from a scan of the tar
headers when there is none.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import logging
import math
import re
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..core.errors import DataError, ImageDecodeError
from ..core.optional import require
from .images import IMAGE_EXTENSIONS, MAX_PIXELS, open_image
from .loader import mix_seed
from .sources import SPLITS, Shards, Source, Split

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_FORMAT = "resnetlab-wds"
SIZES_SAMPLE = 1000  # image sizes an index keeps per split (what a run picks its size from)
IMAGE_KEYS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
# webdataset's own rule for members that belong to no sample (``__meta__`` files).
_META = re.compile(r"__[^/]*__($|/)")
_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def require_webdataset():
    return require("webdataset", "wds: data")


# ------------------------------------------------------------------------ finding shards


def _sample_key(name: str) -> str | None:
    """The sample a member belongs to, as webdataset groups them (``a/b.seg.png`` -> ``a/b``)."""
    if _META.match(name) or (name.startswith("__") and name.endswith("__")):
        return None
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)[0]


def _members(f, mode: str = "r:") -> Iterator[tuple[tarfile.TarInfo, str, tarfile.TarFile]]:
    """Regular members of a tar with their sample key; of an uncompressed one (``r:``) this
    reads the headers only (the data of each member is skipped by a seek)."""
    with tarfile.open(fileobj=f, mode=mode) as tar:  # closing it leaves ``f`` open
        while (info := tar.next()) is not None:
            key = _sample_key(info.name) if info.isreg() else None
            if key is not None:
                yield info, key, tar


def scan_shard(path: Path) -> tuple[int, dict[int, int]]:
    """Samples in one tar file and the count of each class index found in its ``cls`` members."""
    count, classes, last = 0, {}, None
    try:
        with open(path, "rb") as f:
            for info, key, tar in _members(f, "r:*"):  # also .tar.gz and the like
                if key != last:
                    count, last = count + 1, key
                if info.name.lower().endswith(".cls"):
                    text = tar.extractfile(info).read()
                    if text.strip().isdigit():
                        classes[int(text)] = classes.get(int(text), 0) + 1
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"{path}: not a readable tar shard ({exc})") from None
    return count, classes


def shard_labels(path: Path) -> Iterator[tuple[str, int | None]]:
    """(name, class index) of each sample of one tar file in order, from its headers and
    ``.cls`` members (None where it has no valid one); ``name`` is ``SHARD:KEY``, as the
    stream names the sample."""
    last, label = None, None
    try:
        with open(path, "rb") as f:
            for info, key, tar in _members(f, "r:*"):
                if key != last:
                    if last is not None:
                        yield f"{path}:{last}", label
                    last, label = key, None
                if info.name.lower().endswith(".cls"):
                    text = tar.extractfile(info).read().strip()
                    label = int(text) if text.isdigit() else None
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"{path}: not a readable tar shard ({exc})") from None
    if last is not None:
        yield f"{path}:{last}", label


def sample_offset(f, start: int) -> int | None:
    """Byte offset of the first tar header of sample ``start`` (None: the shard is shorter)."""
    seen, last = -1, None
    for info, key, _ in _members(f):
        if key != last:
            seen, last = seen + 1, key
            if seen == start:
                return info.offset
    return None


def read_index(folder: Path) -> dict | None:
    """The ``index.json`` that ``resnetlab shard`` writes beside its shards, or None."""
    path = folder / INDEX_NAME
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read the shard index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise DataError(f"{path}: not a resnetlab shard index (no format {INDEX_FORMAT!r})")
    return index


def _index_splits(folder: Path, index: dict) -> dict[str, Shards]:
    """The splits an index lists, checked: every shard it names is there."""
    where = folder / INDEX_NAME
    try:
        splits = {}
        for name, s in index["splits"].items():
            cc = s.get("class_counts")
            splits[name] = Shards(
                [folder / e["file"] for e in s["shards"]],
                [int(e["count"]) for e in s["shards"]],
                [int(c) for c in cc] if cc else None,
            )
        if not all(isinstance(c, str) for c in index["classes"]):
            raise TypeError("classes is not a list of names")
        stats = index.get("train_stats") or {}
        if "train" in splits and stats:
            splits["train"].mean, splits["train"].std = stats["mean"], stats["std"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: not a shard index ({type(exc).__name__}: {exc}); write the shards again "
            "with resnetlab shard, or remove it to count the shards by a scan"
        ) from None
    for s in splits.values():
        missing = [p for p in s.files if not p.is_file()]
        if missing:
            raise DataError(
                f"{missing[0]}: listed in {where} but missing; copy every shard, or remove "
                f"{INDEX_NAME} to use the shards that are there"
            )
    return splits


def _scan_splits(files: dict[str, list[Path]]) -> tuple[dict[str, Shards], int]:
    """Counts by reading every tar header; class indices (and so their number) from the
    ``cls`` members."""
    counts, per_class = {}, {}
    for name, paths in files.items():
        counts[name], per_class[name] = [], {}
        for p in paths:
            n, classes = scan_shard(p)
            counts[name].append(n)
            for c, k in classes.items():
                per_class[name][c] = per_class[name].get(c, 0) + k
    n_classes = 1 + max((c for pc in per_class.values() for c in pc), default=-1)
    splits = {
        name: Shards(paths, counts[name], [per_class[name].get(c, 0) for c in range(n_classes)])
        for name, paths in files.items()
    }
    return splits, n_classes


def _pattern_files(spec: str) -> list[Path]:
    if "://" in spec or spec.startswith("pipe:"):
        raise DataError(f"wds:{spec}: only local shard files are read (copy them to a disk)")
    from webdataset.shardlists import expand_urls

    if any(c in spec for c in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(spec))]
    else:
        paths = [Path(p) for p in expand_urls(spec)]
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise DataError(
            f"wds:{spec}: {missing[0] if missing else 'no file matches'}: no such shard; give "
            "a folder written by resnetlab shard or a pattern like DIR/train-{000000..000009}.tar"
        )
    return paths


def _pattern_splits(paths: list[Path], index: dict | None) -> dict[str, Shards] | None:
    """The index's splits with the pattern's files as their split, when the index lists them
    all; None when it does not (then the shards are scanned)."""
    if index is None:
        return None
    listed = _index_splits(paths[0].parent, index)
    known = {p.resolve(): (s, c) for s, sh in listed.items() for p, c in zip(sh.files, sh.counts)}
    if not all(p.resolve() in known for p in paths):
        return None
    split = known[paths[0].resolve()][0]
    if [p.resolve() for p in paths] != [p.resolve() for p in listed[split].files]:
        # Some of a split's shards: the index's class counts and statistics are the whole's.
        listed[split] = Shards(paths, [known[p.resolve()][1] for p in paths])
    return listed


def load_wds_source(spec: str) -> Source:
    """``wds:DIR`` or ``wds:PATTERN`` as a Source whose splits stream from the shards.

    A pattern names one split (train, unless its files start with ``val``/``test``); the other
    splits come from an ``index.json`` in the same folder, or else from its ``val-*.tar`` and
    ``test-*.tar`` when the pattern's files start with ``train-``."""
    require_webdataset()
    folder = Path(spec)
    if folder.is_dir():
        index = read_index(folder)
        splits = _index_splits(folder, index) if index is not None else None
        found = {s: sorted(folder.glob(f"{s}-*.tar")) for s in SPLITS}
        if splits is None and not any(found.values()):
            raise DataError(
                f"wds:{spec}: no {INDEX_NAME} and no train-*.tar, val-*.tar or test-*.tar "
                "shards in the folder; write them with: resnetlab shard DATA OUT"
            )
    else:
        paths = _pattern_files(spec)
        index = read_index(paths[0].parent)
        splits = _pattern_splits(paths, index)
        name = paths[0].name.lower()
        split = next((s for s in ("val", "test") if name.startswith(s)), "train")
        found = {split: paths}
        if split == "train" and name.startswith("train-"):
            found.update({s: sorted(paths[0].parent.glob(f"{s}-*.tar")) for s in ("val", "test")})
    if splits is None:
        splits, n_classes = _scan_splits({s: f for s, f in found.items() if f})
        classes, channels, kind = [str(i) for i in range(n_classes)], 3, "wds"
    else:
        classes = list(index["classes"])
        channels, kind = int(index.get("channels", 3)), str(index.get("kind", "wds"))
    if "train" in splits and splits["train"].count == 0:
        raise DataError(f"wds:{spec}: the training shards hold no samples")
    sampled = {
        name: [tuple(map(int, hw)) for hw in s.get("sizes_sample") or []]
        for name, s in (index or {}).get("splits", {}).items()
    }
    out = {
        s: Split(
            labels=torch.empty(0, dtype=torch.long),
            shards=splits[s],
            sizes=sampled.get(s) or None,  # a sample of the split's sizes, from the index
        )
        for s in splits
    }
    return Source(f"wds:{spec}", kind, classes, out, channels)


# ----------------------------------------------------------------------------- decoding


@functools.cache
def _torchvision_jpeg():
    """torchvision's (decode_jpeg, ImageReadMode), or None where it has none (torchvision
    deprecates its decoders from 0.29 in favour of TorchCodec; PIL then decodes everything)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return decode_jpeg, ImageReadMode


def _decode_jpeg_fast(data: bytes, channels: int):
    """libjpeg-turbo through torchvision (1.4x PIL's speed on 500x375 photos here, the same
    pixels, EXIF orientation applied) for the JPEGs where it gives exactly what ``open_image``
    gives: RGB or greyscale files, within the pixel limit. None leaves the file to
    ``open_image`` (other modes, greyscale from colour, and every error, whose reason it says)."""
    tv = _torchvision_jpeg()
    if tv is None:
        return None
    decode_jpeg, read_mode = tv
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
        warnings.filterwarnings("ignore", _TORCHVISION_DEPRECATION, DeprecationWarning)
        try:
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:  # the header only
                mode, (w, h) = img.mode, img.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None
        # libjpeg's greyscale from a colour JPEG skips the RGB step and differs from Pillow's.
        if w * h > MAX_PIXELS or mode not in (("RGB", "L") if channels == 3 else ("L",)):
            return None
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        read = read_mode.RGB if channels == 3 else read_mode.GRAY
        try:
            t = decode_jpeg(buf, mode=read, apply_exif_orientation=True)
        except RuntimeError:
            return None
    return t.permute(1, 2, 0).numpy()  # (H, W, C): what the transforms take, like a PIL image


def decode_image(data: bytes, channels: int, name: str):
    """An image member's bytes to a PIL image or an (H, W, C) uint8 array; the rules of
    ``open_image`` (``ImageDecodeError`` naming ``name`` for anything unreadable)."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    if data[:3] == b"\xff\xd8\xff":  # JPEG start-of-image marker
        fast = _decode_jpeg_fast(data, channels)
        if fast is not None:
            return fast
    try:
        return open_image(data, channels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(name, exc.reason, kind=exc.kind) from None


def decode_sample(sample: dict, channels: int, num_classes: int, name: str):
    """(image, class index) of a webdataset sample dict; ImageDecodeError when unusable."""
    ext = next((k for k in sample if k in IMAGE_KEYS), None)
    if ext is None:
        raise ImageDecodeError(name, "no image member (.jpg, .png, ...)")
    name = f"{name}.{ext}"
    raw = sample.get("cls")
    text = raw.decode("ascii", "replace").strip() if isinstance(raw, bytes) else ""
    if not text.isdigit() or int(text) >= num_classes:
        reason = f"class index {text!r} in its .cls member is not one of 0..{num_classes - 1}"
        raise ImageDecodeError(name, reason if raw is not None else "no .cls member")
    return decode_image(sample[ext], channels, name), int(text)


# ------------------------------------------------------------------------ reading shards


def read_segment(path: Path, start: int, stop: int) -> Iterator[tuple[str, dict | None]]:
    """(name, sample) for samples ``start`` to ``stop - 1`` of one shard, not decoded; a
    shard that is shorter than its count, or breaks off, gives (name, {"__missing__": why})
    for each sample missing, so batch boundaries stay where the plan puts them. A plain
    ``.tar`` is entered at sample ``start`` by a seek; a compressed one is read up to it."""
    wds = require_webdataset()
    done, reason = 0, "missing: the shard holds fewer samples than its index says"
    if start >= stop:
        return
    plain = path.suffix.lower() == ".tar"
    try:
        with open(path, "rb") as f:
            offset = sample_offset(f, start) if start and plain else 0
            if offset is not None:
                f.seek(offset)
                skip = 0 if plain else start
                files = wds.tariterators.tar_file_expander([{"url": str(path), "stream": f}])
                for sample in wds.tariterators.group_by_keys(files):
                    if skip:
                        skip -= 1
                        continue
                    yield f"{path}:{sample['__key__']}", sample
                    done += 1
                    if done == stop - start:
                        break
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        reason = f"missing: the shard breaks off ({exc})"
    for k in range(start + done, stop):
        yield f"{path}:#{k}", {"__missing__": reason}


@dataclass(frozen=True)
class Lane:
    """What one loader worker reads in an epoch: shard segments (shard, first, end) in order,
    the global batch numbers it makes from them, their sizes, and its shuffle seed."""

    segments: list[tuple[int, int, int]]
    batches: list[int]
    sizes: list[int]
    seed: int


def rank_samples(total: int, shuffle: bool, rank: int, world_size: int) -> tuple[int, int]:
    """(first, count) of a rank's slice of an epoch's ``total`` samples."""
    if shuffle:  # the same count on every rank: DDP steps them together
        n = total // world_size
        return rank * n, n
    lo = rank * total // world_size
    return lo, (rank + 1) * total // world_size - lo


def epoch_plan(
    counts: list[int],
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    lanes: int = 1,
) -> list[Lane]:
    """Who reads what in an epoch (see the module docstring); batch ``j`` is lane ``j % lanes``."""
    order = list(range(len(counts)))
    if shuffle:
        g = torch.Generator().manual_seed(mix_seed(seed, epoch, 6))
        order = torch.randperm(len(counts), generator=g).tolist()
    first, n = rank_samples(sum(counts), shuffle, rank, world_size)
    steps = n // batch_size if drop_last else math.ceil(n / batch_size)
    sizes = [min(batch_size, n - j * batch_size) for j in range(steps)]
    starts, pos = [], 0  # where each shard (in this epoch's order) begins in the sequence
    for s in order:
        starts.append(pos)
        pos += counts[s]
    plan, a = [], first
    for lane in range(lanes):
        batches = list(range(lane, steps, lanes))
        b = a + sum(sizes[j] for j in batches)
        segments = [
            (s, max(a, st) - st, min(b, st + counts[s]) - st)
            for s, st in zip(order, starts)
            if st < b and st + counts[s] > a
        ]
        lane_seed = mix_seed(seed, epoch, rank, lane, 5)
        plan.append(Lane(segments, batches, [sizes[j] for j in batches], lane_seed))
        a = b
    return plan
