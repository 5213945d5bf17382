"""One pass over every image of a data set: what it is called, its split and label, and the
fingerprints the audit compares (the hash of its decoded pixels, its perceptual hash, a small
grey thumbnail), each image decoded once."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
from PIL import Image

from ..core.errors import ImageDecodeError
from ..data.curate import item_refs, pixel_hash
from ..data.images import open_image
from ..data.sources import Source

HASH_SIDE = 32  # pHash: the image in grey at 32x32, its 8x8 lowest DCT frequencies
THUMB_SIDE = 16  # the grey thumbnail near duplicates are confirmed on
PIXEL_SIDE = 16  # --labels without a run: the label model reads the images at 16x16


@dataclass
class Items:
    """Every image of the data, in split order (train, val, test), as flat arrays."""

    refs: list[str]  # a path, or SPLIT#INDEX for images held in memory
    split: np.ndarray  # (N,) split name of each
    index: np.ndarray  # (N,) place in its split
    label: list[str]  # class name (multi-label: the names joined by " | ")
    label_index: np.ndarray  # (N,) class index, -1 for multi-label rows
    exact: list[str]  # pixel fingerprint
    phash: np.ndarray  # (N,) uint64
    thumb: np.ndarray  # (N, THUMB_SIDE, THUMB_SIDE) float32, grey 0-255
    size: np.ndarray  # (N, 2) h, w
    pixels: np.ndarray | None  # (N, PIXEL_SIDE**2 * C) float16 in [0, 1], when asked for
    valid: np.ndarray  # (N,) bool: False for an image that could not be read again
    errors: list[tuple[str, str]]  # those images, and why

    def __len__(self) -> int:
        return len(self.refs)

    def where(self, i: int) -> str:
        return f"{self.refs[i]} ({self.split[i]}, {self.label[i]})"


def grey_square(img: Image.Image, side: int = HASH_SIDE) -> np.ndarray:
    """The image in grey, resized to side x side as imagehash does for pHash (Lanczos)."""
    return np.asarray(img.convert("L").resize((side, side), Image.Resampling.LANCZOS), np.float64)


def phash_bits(squares: np.ndarray) -> np.ndarray:
    """pHash of each (B, 32, 32) grey square: the 8x8 lowest frequencies of its 2-D DCT, each
    bit set where the coefficient is above their median (Zauner 2010; imagehash's ``phash``),
    packed row-major into a uint64 (the first coefficient in the highest bit)."""
    from scipy.fft import dct

    low = dct(dct(squares, axis=1), axis=2)[:, :8, :8].reshape(len(squares), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    weights = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def thumbnail(square: np.ndarray) -> np.ndarray:
    """The 32x32 grey square averaged down to 16x16 (float32, 0-255)."""
    k = square.shape[0] // THUMB_SIDE
    return square.reshape(THUMB_SIDE, k, THUMB_SIDE, k).mean(axis=(1, 3)).astype(np.float32)


def to_pil(a: np.ndarray) -> Image.Image:
    """(C, H, W) or (H, W, C) uint8 to a Pillow image."""
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    a = np.ascontiguousarray(a)
    return Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a)


def _hwc(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def load_pixels(source: Source, split: str, i: int) -> np.ndarray:
    """The decoded pixels of one image, (H, W, C) uint8, as training reads them (for a split
    of shards, sample ``i`` in the order the shards are read)."""
    s = source.splits[split]
    if s.images is not None:
        return s.images[i].permute(1, 2, 0).numpy()
    if s.shards is not None:
        from ..data.wds import decode_sample, read_segment

        for f, n in zip(s.shards.files, s.shards.counts):
            if i < n:
                name, sample = next(read_segment(f, i, i + 1))
                return _hwc(decode_sample(sample, source.channels, source.num_classes, name)[0])
            i -= n
        raise IndexError(f"{split}: no sample {i} in its shards")
    return _hwc(open_image(s.paths[i], source.channels))


def _shard_results(source: Source, split: str, pool, features: bool, chunk: int = 256):
    """(name, class index, fingerprints or the reason it is unreadable) of every sample of a
    split of shards, read front to back and decoded on ``pool``'s threads a chunk at a time."""
    from ..data.wds import decode_sample, read_segment

    s = source.splits[split]

    def one(item):
        name, sample = item
        if "__missing__" in sample:
            return name, -1, sample["__missing__"]
        try:
            img, label = decode_sample(sample, source.channels, source.num_classes, name)
        except ImageDecodeError as exc:
            return name, -1, str(exc.reason)
        return name, label, _fingerprints(_hwc(img), features)

    samples = (x for f, n in zip(s.shards.files, s.shards.counts) for x in read_segment(f, 0, n))
    out = []
    while batch := list(islice(samples, chunk)):
        out += pool.map(one, batch)
    return out


def small_pixels(img: Image.Image, side: int = PIXEL_SIDE) -> np.ndarray:
    """The image at side x side in its own channels, [0, 1], flattened (float16)."""
    a = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return (a.astype(np.float32).ravel() / 255.0).astype(np.float16)


def _fingerprints(pixels: np.ndarray, features: bool):
    img = to_pil(pixels)
    small = small_pixels(img) if features else None
    return pixel_hash(pixels), grey_square(img), pixels.shape[:2], small


def scan(source: Source, workers: int | None = None, features: bool = False) -> Items:
    """Fingerprint every image of ``source`` (files decoded on ``workers`` threads);
    ``features``: also keep each image small, for a label model on pixels."""
    refs, split_of, index, label, label_index = [], [], [], [], []
    jobs, streamed = [], {}
    workers = workers or min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)  # Pillow decodes without the GIL
    for name, s in source.splits.items():
        if s.shards is not None:  # labels are read with the images
            part = _shard_results(source, name, pool, features)
            refs += [r[0] for r in part]
            split_of += [name] * len(part)
            index += range(len(part))
            label += [source.classes[r[1]] if r[1] >= 0 else "?" for r in part]
            label_index += [r[1] for r in part]
            streamed.update({len(jobs) + k: r[2] for k, r in enumerate(part)})
            jobs += [None] * len(part)
            continue
        refs += item_refs(source, name)
        split_of += [name] * len(s)
        index += range(len(s))
        if s.labels.dim() == 2:  # multi-hot rows
            rows = (s.labels > 0.5).tolist()
            label += [
                " | ".join(c for c, on in zip(source.classes, r) if on) or "(none)" for r in rows
            ]
            label_index += [-1] * len(s)
        else:
            label += [source.classes[int(y)] for y in s.labels]
            label_index += s.labels.tolist()
        jobs += [(name, i) for i in range(len(s))]

    def one(job):
        try:
            return _fingerprints(load_pixels(source, *job), features)
        except ImageDecodeError as exc:  # changed since it was listed: said, and left out
            return str(exc.reason)

    with pool:
        files = [j for j in jobs if j is not None]
        decoded = iter(pool.map(one, files, chunksize=64))
        results = [streamed[k] if j is None else next(decoded) for k, j in enumerate(jobs)]
    errors = [(refs[k], r) for k, r in enumerate(results) if isinstance(r, str)]
    valid = np.array([not isinstance(r, str) for r in results], dtype=bool)
    # An image that cannot be read matches nothing: its own fingerprint, a flat thumbnail.
    width = PIXEL_SIDE**2 * source.channels
    results = [
        (
            f"unreadable-{k}",
            np.zeros((HASH_SIDE, HASH_SIDE)),
            (0, 0),
            np.zeros(width, np.float16) if features else None,
        )
        if isinstance(r, str)
        else r
        for k, r in enumerate(results)
    ]
    squares = np.stack([r[1] for r in results]) if results else np.zeros((0, HASH_SIDE, HASH_SIDE))
    return Items(
        refs=refs,
        split=np.array(split_of, dtype=object),
        index=np.array(index, dtype=np.int64),
        label=label,
        label_index=np.array(label_index, dtype=np.int64),
        exact=[r[0] for r in results],
        phash=phash_bits(squares) if len(squares) else np.zeros(0, np.uint64),
        thumb=np.stack([thumbnail(q) for q in squares])
        if len(squares)
        else np.zeros((0, THUMB_SIDE, THUMB_SIDE), np.float32),
        size=np.array([r[2] for r in results], dtype=np.int64).reshape(-1, 2),
        pixels=np.stack([r[3] for r in results]).reshape(len(results), width) if features else None,
        valid=valid,
        errors=errors,
    )
