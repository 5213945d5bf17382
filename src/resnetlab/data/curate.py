"""Leaving images out and correcting labels without touching the data: ``--exclude FILE``
(one image a line) and ``--relabel FILE`` (a CSV of ``path,label``), the files ``resnetlab
audit`` writes with ``--write-exclude`` and ``--write-relabel``.

An image is named by its path (relative paths in these files are relative to the file's own
folder, as in a ``csv:`` listing), or, for data held in memory (digits, MNIST, CIFAR), by its
place ``SPLIT#INDEX`` in the split as loaded, followed by the fingerprint of its pixels so that
a file written for another split (another --seed or --val-ratio) is refused instead of
leaving out the wrong images. A sample of ``wds:`` shards is ``SHARD:KEY`` (the tar file, its
path as any other, and the sample's key in it); shards are not rewritten: the stream leaves
the sample out, or gives it the new label, as it reads (``Shards.overrides``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .sources import SPLITS, DataError, Source, class_name

log = logging.getLogger(__name__)

_REF = re.compile(r"^(train|val|test)#(\d+)$")
_SAMPLE = re.compile(r"^(.+\.tar(?:\.[A-Za-z0-9]+)?):([^:]+)$")  # SHARD:KEY
SHOW = 5  # entries named in a message that lists the ones that match nothing


def pixel_hash(pixels: np.ndarray | torch.Tensor) -> str:
    """A fingerprint of decoded pixels (their shape too): equal for a PNG and its re-saved
    copy, different for any changed pixel. 16 hex digits (64 bits)."""
    a = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    a = np.ascontiguousarray(a, dtype=np.uint8)
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def item_refs(source: Source, split: str) -> list[str]:
    """How each image of ``split`` is named in exclude and relabel files: its path, or for
    data in memory ``SPLIT#INDEX``."""
    s = source.splits[split]
    if s.paths is not None:
        return [str(p) for p in s.paths]
    if s.images is not None:
        return [f"{split}#{i}" for i in range(len(s))]
    raise DataError(
        f"{source.name}: the {split} split is streamed from shards; exclude and relabel files "
        "name files or images held in memory"
    )


def _key(path: str | os.PathLike) -> str:
    return os.path.normcase(str(Path(path).expanduser().resolve()))


def ref_for_file(ref: str, listing: str | os.PathLike) -> str:
    """``ref`` as written into a file at ``listing``: a path relative to its folder when it is
    below that folder, else absolute; ``SPLIT#INDEX`` as it is."""
    if _REF.match(ref):
        return ref
    target = Path(ref).expanduser().resolve()
    base = Path(listing).expanduser().resolve().parent
    try:
        return str(target.relative_to(base))
    except ValueError:
        return str(target)


@dataclass
class _Entry:
    ref: str  # as written
    where: str  # "line N"
    pixels: str | None = None


def _resolve(entry: _Entry, listing: Path) -> tuple[str, object]:
    """("mem", (split, index)), ("sample", key) for a sample in a shard, or ("file", key)."""
    m = _REF.match(entry.ref)
    if m:
        return "mem", (m.group(1), int(m.group(2)))
    m = _SAMPLE.match(entry.ref)
    text = m.group(1) if m else entry.ref
    p = Path(text).expanduser()
    key = _key(p if p.is_absolute() else listing.parent / p)
    return ("sample", f"{key}:{m.group(2)}") if m else ("file", key)


class _Index:
    """Where each named image is in a source: by path, or by split and place for images held
    in memory."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.files: dict[str, tuple[str, int]] = {}
        for name, s in source.splits.items():
            if s.paths is not None:
                for i, p in enumerate(s.paths):
                    self.files.setdefault(_key(p), (name, i))
        self._samples: dict[str, tuple[str, str]] | None = None
        self.labels: dict[str, int | None] = {}  # a shard sample's name: its .cls index

    def samples(self) -> dict[str, tuple[str, str]]:
        """Every sample of the shards (their tar headers read once, on first use)."""
        if self._samples is None:
            from .wds import shard_labels

            self._samples = {}
            for split, s in self.source.splits.items():
                for f in s.shards.files if s.shards is not None else []:
                    for name, label in shard_labels(f):
                        key = name[len(str(f)) + 1 :]
                        self._samples.setdefault(f"{_key(f)}:{key}", (split, name))
                        self.labels[name] = label
        return self._samples

    def find(self, entry: _Entry, listing: Path, flag: str) -> tuple[str, int | str] | None:
        """(split, place) of the image ``entry`` names; for a sample of a shard the place is
        its name (``SHARD:KEY``, as the stream names it)."""
        kind, where = _resolve(entry, listing)
        if kind == "file":
            return self.files.get(where)
        if kind == "sample":
            return self.samples().get(where)
        split, i = where
        s = self.source.splits.get(split)
        if s is None or s.images is None or i >= len(s):
            return None
        if entry.pixels and pixel_hash(s.images[i]) != entry.pixels:
            raise DataError(
                f"{flag} {listing}: {entry.where} names {entry.ref}, but that image's pixels are "
                f"not the ones the file was written for: it was written for other splits (another "
                f"--seed, --val-ratio or --test-ratio); write it again with those settings"
            )
        return split, i


def _read_lines(path: Path, flag: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{flag} {path}: cannot read ({exc})") from None


def read_exclude(path: str | os.PathLike) -> list[_Entry]:
    """The images an exclude file names: one a line, ``#`` starts a comment line; an image in
    memory is ``SPLIT#INDEX`` followed by ``pixels=FINGERPRINT``."""
    path = Path(path)
    out = []
    for n, line in enumerate(_read_lines(path, "--exclude"), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        ref, rest = text, ""
        if "\t" in text:
            ref, _, rest = text.partition("\t")
        elif len(text.split()) == 2 and _REF.match(text.split()[0]):
            ref, rest = text.split()
        rest = rest.strip()
        pixels = rest[len("pixels=") :] if rest.startswith("pixels=") else None
        out.append(_Entry(ref.strip(), f"line {n}", pixels or None))
    return out


def _unmatched(flag: str, path: Path, missing: list[_Entry], total: int, source: Source) -> None:
    if not missing:
        return
    shown = ", ".join(e.ref for e in missing[:SHOW]) + (" ..." if len(missing) > SHOW else "")
    if len(missing) == total:
        raise DataError(
            f"{flag} {path}: none of its {total} image(s) is in {source.name} (the first: "
            f"{missing[0].ref}); relative paths are relative to the file's folder "
            f"({path.parent})"
        )
    log.warning(
        "%s %s: %d of %d image(s) are not in %s and change nothing: %s",
        flag,
        path,
        len(missing),
        total,
        source.name,
        shown,
    )


def apply_exclude(source: Source, path: str | os.PathLike) -> tuple[Source, int]:
    """``source`` without the images ``path`` names; and how many were left out."""
    path = Path(path)
    entries = read_exclude(path)
    if not entries:
        return source, 0
    index = _Index(source)
    drop: dict[str, set[int]] = {}
    missing = []
    for e in entries:
        found = index.find(e, path, "--exclude")
        if found is None:
            missing.append(e)
        else:
            drop.setdefault(found[0], set()).add(found[1])
    _unmatched("--exclude", path, missing, len(entries), source)
    splits = dict(source.splits)
    for name, rows in drop.items():
        s = splits[name]
        if s.shards is not None:
            gone = dict.fromkeys(rows, None)
            splits[name] = replace(
                s, shards=replace(s.shards, overrides={**s.shards.overrides, **gone})
            )
            continue
        keep = torch.tensor([i for i in range(len(s)) if i not in rows], dtype=torch.long)
        splits[name] = s.subset(keep)
    out = replace(source, splits=splits)
    _check_classes(out, f"--exclude {path}")
    return out, sum(map(len, drop.values()))


def _check_classes(source: Source, why: str) -> None:
    train = source.splits.get("train")
    if train is None or train.shards is not None or train.labels.dim() != 1:  # not indices
        return
    counts = torch.bincount(train.labels.long(), minlength=len(source.classes)).tolist()
    empty = [c for c, n in zip(source.classes, counts) if n == 0]
    if empty:
        raise DataError(f"{why}: class(es) {', '.join(empty[:5])} have no training image left")


RELABEL_COLUMNS = ("path", "given", "label", "probability")


def read_relabel(path: str | os.PathLike) -> list[tuple[_Entry, str, str]]:
    """(image, given label or "", new label) per row of a relabel CSV: columns ``path`` and
    ``label`` (the label to train with), optionally ``given`` (the label it has now, checked)
    and ``pixels`` (for images in memory); a row with an empty label changes nothing."""
    path = Path(path)
    lines = _read_lines(path, "--relabel")
    rows = list(csv.reader(lines))
    if not rows:
        raise DataError(f"--relabel {path}: empty; expected a header 'path,label' and rows")
    head = [c.strip().lower() for c in rows[0]]
    if "path" not in head or "label" not in head:
        raise DataError(
            f"--relabel {path}: the first line {rows[0]!r} is not a header naming the columns "
            "'path' and 'label' (optionally 'given')"
        )
    col = {name: head.index(name) for name in head}
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue

        def cell(name: str, row=row) -> str:
            i = col.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        if not cell("path"):
            raise DataError(f"--relabel {path}: line {n} has no path")
        entry = _Entry(cell("path"), f"line {n}", cell("pixels") or None)
        if cell("label"):
            out.append((entry, class_name(cell("given")), class_name(cell("label"))))
    return out


def apply_relabel(source: Source, path: str | os.PathLike) -> tuple[Source, int]:
    """``source`` with the labels ``path`` gives; and how many images changed label."""
    path = Path(path)
    source.task.require("relabel", DataError, f"--relabel {path}: ")
    rows = read_relabel(path)
    if not rows:
        return source, 0
    index = _Index(source)
    classes = {c: i for i, c in enumerate(source.classes)}
    labels = {name: s.labels.clone() for name, s in source.splits.items() if s.shards is None}
    relabelled: dict[str, dict[str, int | None]] = {
        name: dict(s.shards.overrides) for name, s in source.splits.items() if s.shards is not None
    }
    missing, changed = [], 0
    for entry, given, label in rows:
        if label not in classes:
            raise DataError(
                f"--relabel {path}: {entry.where}: label {label!r} is not a class of "
                f"{source.name} ({', '.join(source.classes[:20])})"
            )
        found = index.find(entry, path, "--relabel")
        if found is None:
            missing.append(entry)
            continue
        split, i = found
        if isinstance(i, str):  # a sample of a shard: its label is in its .cls member
            held = relabelled[split].get(i, index.labels.get(i))
            now = source.classes[held] if held is not None and held < len(classes) else "?"
        else:
            held = int(labels[split][i])
            now = source.classes[held]
        if given and given != now:
            raise DataError(
                f"--relabel {path}: {entry.where}: {entry.ref} has label {now!r}, but the file "
                f"says it had {given!r}; it was written for other data"
            )
        if held != classes[label]:
            if isinstance(i, str):
                relabelled[split][i] = classes[label]
            else:
                labels[split][i] = classes[label]
            changed += 1
    _unmatched("--relabel", path, missing, len(rows), source)
    splits = {
        name: replace(s, labels=labels[name])
        if name in labels
        else replace(s, shards=replace(s.shards, overrides=relabelled[name]))
        for name, s in source.splits.items()
    }
    out = replace(source, splits=splits)
    _check_classes(out, f"--relabel {path}")
    return out, changed


def apply_curation(
    source: Source,
    exclude: str | os.PathLike | None = None,
    relabel: str | os.PathLike | None = None,
) -> Source:
    """The images of ``exclude`` left out and the labels of ``relabel`` applied (relabelling
    first, so both files may name the images as the data has them); says what changed."""
    if relabel:
        source, n = apply_relabel(source, relabel)
        log.warning("--relabel %s: %d image(s) take the label the file gives", relabel, n)
    if exclude:
        source, n = apply_exclude(source, exclude)
        log.warning("--exclude %s: %d image(s) left out", exclude, n)
    return source


def write_exclude(
    path: str | os.PathLike, refs: list[tuple[str, str | None, str]], data: str
) -> Path:
    """An exclude file: ``refs`` are (ref, pixel fingerprint for images in memory or None,
    why) per image."""
    from ..core.files import atomic_write_text

    path = Path(path)
    lines = [
        "# images to leave out: resnetlab train --exclude THIS_FILE (written by resnetlab audit",
        f"# {data}); one a line, relative paths from this file's folder; delete a line to keep",
        "# that image",
    ]
    for ref, pixels, why in refs:
        lines.append(f"# {why}")
        text = ref_for_file(ref, path)
        lines.append(f"{text}\tpixels={pixels}" if pixels and _REF.match(text) else text)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_relabel(path: str | os.PathLike, rows: list[dict], memory: bool) -> Path:
    """A relabel CSV of ``rows`` (``ref``, ``given``, ``suggested``, ``probability``,
    ``pixels``): the label column starts as the suggestion, for the user to edit."""
    import io as _io

    from ..core.files import atomic_write_text

    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*RELABEL_COLUMNS, *(["pixels"] if memory else [])])
    for r in rows:
        extra = [r.get("pixels") or ""] if memory else []
        ref = ref_for_file(r["ref"], path)
        w.writerow([ref, r["given"], r["suggested"], f"{r['probability']:.4f}", *extra])
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


__all__ = [
    "SPLITS",
    "apply_curation",
    "apply_exclude",
    "apply_relabel",
    "item_refs",
    "pixel_hash",
    "read_exclude",
    "read_relabel",
    "write_exclude",
    "write_relabel",
]
