"""Data sources: the DATA strings of the command line, each giving splits and a class list.

``digits`` (embedded), a folder in ImageFolder layout, ``mnist:DIR``, ``cifar10:DIR``,
``cifar100:DIR`` and ``csv:FILE``. Small sets come back as uint8 tensors in memory; folders and
CSV lists as file paths checked once before training (unreadable files listed and skipped);
WebDataset shards (``wds:``, read in ``wds``) as a list of tar files streamed per epoch.

Files are checked in two steps: their headers when they are listed (size, format, an empty or
missing file, a decompression bomb: what the split and the input size need), and their pixels
once, after the split. ``load_source(check=False)`` leaves the second step to the pipeline,
which decodes each file once for everything at the same time (the check, the in-memory cache,
the statistics); a file whose pixels cannot be decoded leaves its split then, so the splits are
the same either way.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataError
from ..tasks import Task, task_of
from .decode import Unreadable, decode_files
from .images import ImageDecodeError, is_image_file, is_junk, probe_image, skip_reason
from .problems import report_problems

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DIGITS_SEED = 0  # the digits split is fixed, whatever --seed says, so results stay comparable
SHOW_SKIPPED = 10  # files named in the log when more are skipped (the count says how many)


def class_name(text: str) -> str:
    """A class name as one spelling (Unicode NFC): macOS writes a folder name decomposed
    (``cafe`` + a combining accent), a name typed elsewhere is composed; both are one class."""
    return unicodedata.normalize("NFC", text)


@dataclass
class BadFile:
    path: str
    reason: str


@dataclass
class Shards:
    """A split stored as WebDataset tar shards: the files in order and the samples in each.

    ``class_counts`` (samples per class) and ``mean``/``std`` come from the shards' index when
    it has them; without one the files were scanned and only the counts are known."""

    files: list[Path]
    counts: list[int]
    class_counts: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    # ``--exclude`` and ``--relabel`` for shards, which cannot be rewritten: a sample's name
    # (``SHARD:KEY``, as the stream names it) to the class index it trains with, or None to
    # leave it out. The stream applies them as it reads; the shards are not changed.
    overrides: dict[str, int | None] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """The samples in the files (what each epoch's plan is cut from)."""
        return sum(self.counts)

    @property
    def left_out(self) -> int:
        return sum(v is None for v in self.overrides.values())


@dataclass
class Split:
    """One split: labels plus either in-memory uint8 images (N, C, H, W), file paths, or
    shards streamed from tar files (then ``labels`` is empty: they are read with the images)."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    paths: list[Path] | None = None
    # (h, w) per file, from the scan; for shards a sample of them, from their index
    sizes: list[tuple[int, int]] | None = None
    shards: Shards | None = None
    # Files whose pixels were decoded once without an error (their headers always were read).
    checked: bool = True

    def __len__(self) -> int:
        if self.shards is not None:
            return self.shards.count - self.shards.left_out
        return int(self.labels.shape[0])

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    @property
    def streamed(self) -> bool:
        return self.shards is not None

    def subset(self, index: torch.Tensor) -> Split:
        if self.shards is not None:
            # A shard is read front to back; picking samples by index would read every shard.
            raise DataError("a split stored as shards cannot be subset by index")
        idx = index.tolist()
        return Split(
            labels=self.labels[index],
            images=self.images[index] if self.images is not None else None,
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            sizes=[self.sizes[i] for i in idx] if self.sizes is not None else None,
            checked=self.checked,
        )


@dataclass
class Source:
    name: str
    kind: str
    classes: list[str]
    splits: dict[str, Split]
    channels: int
    bad_files: list[BadFile] = field(default_factory=list)
    # Files in the folders that are not images by their name, and why each is left out.
    ignored: list[BadFile] = field(default_factory=list)
    # Multi-label data: each split's labels are multi-hot float rows (N, classes).
    multilabel: bool = False
    # Files listed (readable or not) and the unreadable fraction that stops a run; the files
    # in ``bad_files`` up to ``reported`` have been logged.
    listed: int = 0
    max_bad_fraction: float = 1.0
    reported: int = field(default=0, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def task(self) -> Task:
        """Single- or multi-label (``tasks``)."""
        return task_of(self.multilabel)

    @property
    def ignored_files(self) -> int:
        return len(self.ignored)

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        splits = [self.splits[split]] if split else list(self.splits.values())
        counts = torch.zeros(len(self.classes), dtype=torch.long)
        for s in splits:
            if s.shards is not None:
                if s.shards.class_counts is not None:
                    counts += torch.tensor(s.shards.class_counts, dtype=torch.long)
                continue
            counts += label_counts(s.labels, len(self.classes))
        return dict(zip(self.classes, counts.tolist()))


def label_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class: class indices (N,) counted, or multi-hot rows (N, C) summed."""
    if labels.dim() == 2:
        return (labels > 0.5).sum(0).long()
    return torch.bincount(labels.long(), minlength=num_classes)


def strata(labels: torch.Tensor) -> torch.Tensor:
    """One stratum per sample: its class, or for multi-hot rows its rarest label (images
    without any label form a stratum of their own), so that every label's rare images are
    spread over the splits as the single-label split spreads a class."""
    if labels.dim() == 1:
        return labels
    truth = labels > 0.5
    freq = truth.sum(0).double()
    rarity = torch.where(truth, freq.expand_as(truth), torch.full_like(freq, float("inf")))
    key = rarity.argmin(1)
    key[~truth.any(1)] = labels.shape[1]
    return key


def stratified_split(
    labels: torch.Tensor, ratios: dict[str, float], seed: int
) -> dict[str, torch.Tensor]:
    """Split indices per class by ``ratios`` (e.g. {"val": .1, "test": .1}); the rest is train.

    Every class keeps at least one training sample; the order inside each split is sorted, so the
    result depends only on ``seed`` and the labels.
    """
    total = sum(ratios.values())
    if any(r < 0 for r in ratios.values()) or total >= 1.0:
        raise DataError(f"split ratios {ratios} must be >= 0 and sum to less than 1")
    labels = strata(labels)
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], **{k: [] for k in ratios}}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for name, ratio in ratios.items():
            n = min(round(len(idx) * ratio), max(0, len(idx) - 1 - start))
            parts[name].append(idx[start : start + n])
            start += n
        parts["train"].append(idx[start:])
    return {k: torch.sort(torch.cat(v))[0] for k, v in parts.items() if v and sum(map(len, v))}


# ---------------------------------------------------------------------------------- digits


def check_ratios(val_ratio: float, test_ratio: float) -> None:
    """Held-out fractions: each in [0, 1), together below 1 (something must be left to train)."""
    for flag, r in (("--val-ratio", val_ratio), ("--test-ratio", test_ratio)):
        if not 0.0 <= r < 1.0:
            raise DataError(f"{flag} must be in [0, 1), got {r:g} (e.g. 0.1 holds out 10 %)")
    if val_ratio + test_ratio >= 1.0:
        raise DataError(
            f"--val-ratio {val_ratio:g} and --test-ratio {test_ratio:g} leave nothing to train "
            "on; together they must be below 1"
        )


def load_digits_source() -> Source:
    """scikit-learn's 1,797 real 8x8 handwritten digits (0-16 grey levels), 70/15/15 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # 17 grey levels (0..16) to 0..255.
    images = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    full = Split(labels=labels, images=images)
    parts = stratified_split(labels, {"val": 0.15, "test": 0.15}, DIGITS_SEED)
    splits = {k: full.subset(parts[k]) for k in SPLITS}
    return Source("digits", "digits", [str(i) for i in range(10)], splits, channels=1)


def carve_val(splits: dict[str, Split], val_ratio: float, seed: int) -> dict[str, Split]:
    """Make a validation split from train when the data set has none."""
    if "val" in splits or val_ratio <= 0:
        return splits
    parts = stratified_split(splits["train"].labels, {"val": val_ratio}, seed)
    train = splits["train"]
    out = {"train": train.subset(parts["train"])}
    if "val" in parts:
        out["val"] = train.subset(parts["val"])
    out.update({k: v for k, v in splits.items() if k not in ("train", "val")})
    return out


# ------------------------------------------------------------------------- files on disk


def scan_files(paths: list[Path], workers: int | None = None) -> list[tuple[int, int] | str]:
    """Read every file's header (``probe_image``); for each, its (h, w) or the reason it
    cannot be used. The pixels are decoded later, once (``check_splits`` or the pipeline)."""

    def check(path: Path) -> tuple[int, int] | str:
        try:
            return probe_image(path)
        except ImageDecodeError as exc:
            return exc.reason

    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # the reads overlap
        return list(pool.map(check, paths))


def keep_readable(source: Source, name: str, results: list) -> list[int]:
    """After the one decode of split ``name``'s files (``decode_files``' ``results``): the
    files found unreadable join ``source.bad_files`` and leave the split, which is then
    checked. Returns the positions kept. ``settle_bad_files`` then reports them."""
    split = source.splits[name]
    keep = [i for i, r in enumerate(results) if not isinstance(r, Unreadable)]
    source.bad_files += [
        BadFile(str(split.paths[i]), r.reason)
        for i, r in enumerate(results)
        if isinstance(r, Unreadable)
    ]
    if len(keep) < len(split):
        split = split.subset(torch.tensor(keep, dtype=torch.long))
    split.checked = True
    source.splits[name] = split
    return keep


def check_splits(source: Source, names=None, progress: bool = True) -> Source:
    """Decode the files of the splits not yet checked (``names``: those only), leaving out
    the unreadable ones; then ``settle_bad_files``."""
    for name in list(names or source.splits):
        split = source.splits.get(name)
        if split is None or split.checked or split.paths is None:
            continue
        results = decode_files(
            split.paths, source.channels, None, desc=f"checking {name} images" if progress else None
        )
        keep_readable(source, name, results)
    settle_bad_files(source)
    return source


def settle_bad_files(source: Source) -> None:
    """Stop when more of the listed files than ``max_bad_fraction`` are unreadable (the
    error lists them); else log the ones not logged yet, once. A training split left without
    a readable image of some class is an error naming it."""
    bad, total = source.bad_files, source.listed
    if bad and total and len(bad) / total > source.max_bad_fraction:
        listing = "\n  ".join(f"{b.path}: {b.reason}" for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{source.name}: {len(bad)} of {total} files ({len(bad) / total:.1%}) cannot be "
            f"read, more than --max-bad-fraction {source.max_bad_fraction:g}:\n  {listing}"
            f"{more}\nFix or remove them, or raise --max-bad-fraction to skip them."
        )
    new = bad[source.reported :]
    if new:
        # Listed once: here when they are skipped, in the error above when they stop the run.
        log.warning("%d of %d files cannot be read and are skipped:", len(new), total)
        for b in new:
            log.warning("  %s: %s", b.path, b.reason)
        source.reported = len(bad)
    _check_classes(source)


def _check_classes(source: Source) -> None:
    for split, s in source.splits.items():
        if split not in ("train", "all") or s.shards is not None or not len(s):
            continue
        counts = label_counts(s.labels, len(source.classes))
        empty = [source.classes[i] for i, c in enumerate(counts.tolist()) if c == 0]
        report_problems(
            [
                (
                    ("no training image", c),
                    f"{source.name}: class {c!r} has no readable training image",
                )
                for c in empty
            ]
        )


def _list_class_dir(folder: Path) -> tuple[list[Path], list[BadFile]]:
    """Image files under a class folder (recursively), sorted; and the other files, each with
    the reason it is left out (junk such as .DS_Store is left out without a word)."""
    files, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d))
        for name in sorted(filenames):
            if is_junk(name):
                continue
            path = Path(dirpath) / name
            if is_image_file(name):
                files.append(path)
            else:
                ignored.append(BadFile(str(path), skip_reason(path)))
    return files, ignored


def log_ignored(name: str, ignored: list[BadFile]) -> None:
    """One warning naming the files left out (the first few, and how many in all)."""
    if not ignored:
        return
    images = sum(1 for b in ignored if "image without" in b.reason)
    also = f", {images} of them images without an image extension" if images else ""
    shown = sorted(ignored, key=lambda b: "image without" not in b.reason)[:SHOW_SKIPPED]
    more = f"\n  ... and {len(ignored) - len(shown)} more" if len(ignored) > len(shown) else ""
    log.warning(
        "%s: %d file(s) that are not images by their name are left out%s:\n  %s%s",
        name,
        len(ignored),
        also,
        "\n  ".join(f"{b.path}: {b.reason}" for b in shown),
        more,
    )


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not is_junk(p.name)), key=lambda p: p.name
    )


def _build_file_source(
    name: str,
    kind: str,
    classes: list[str],
    split_files: dict[str, tuple[list[Path], list]],
    channels: int,
    max_bad_fraction: float,
    ignored: list[BadFile],
    multilabel: bool = False,
) -> Source:
    """``split_files``: per split, the paths and their labels (a class index each, or for
    ``multilabel`` a list of class indices each); ``ignored``: files left out by their name.
    Only the headers are read here: the splits come back not yet ``checked``."""
    splits, bad = {}, []
    total = 0
    for split, (paths, labels) in split_files.items():
        results = scan_files(paths)
        keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
        bad += [BadFile(str(paths[i]), r) for i, r in enumerate(results) if isinstance(r, str)]
        total += len(paths)
        splits[split] = Split(
            labels=task_of(multilabel).targets([labels[i] for i in keep], len(classes)),
            paths=[paths[i] for i in keep],
            sizes=[results[i] for i in keep],
            checked=False,
        )
    source = Source(
        name,
        kind,
        classes,
        splits,
        channels,
        bad,
        ignored,
        multilabel,
        listed=total,
        max_bad_fraction=max_bad_fraction,
    )
    if bad and total and len(bad) / total > max_bad_fraction:
        settle_bad_files(source)  # raises
    _check_classes(source)
    return source


def load_folder_source(
    folder: Path,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    channels: int,
    max_bad_fraction: float,
    check: bool = True,
) -> Source:
    """``DIR/train|val|test/<class>/*`` or ``DIR/<class>/*`` (split by seeded ratios).
    ``check``: decode every file now (else the pipeline does, once; see the module's doc)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (DATA is digits, a folder, mnist:DIR, ...)")
    presplit = (folder / "train").is_dir()
    split_roots = (
        {s: folder / s for s in SPLITS if (folder / s).is_dir()} if presplit else {"all": folder}
    )
    class_source = split_roots["train" if presplit else "all"]
    class_dirs = _class_dirs(class_source)
    if not class_dirs:
        raise DataError(
            f"{class_source}: no class folders; expected {class_source}/<class>/<image files>"
        )
    # Folders whose names differ only in their Unicode form (NFD from macOS, NFC typed) are
    # one class.
    classes = sorted({class_name(d.name) for d in class_dirs})
    index = {c: i for i, c in enumerate(classes)}
    split_files: dict[str, tuple[list[Path], list[int]]] = {}
    ignored: list[BadFile] = []
    problems = []  # said all at once (stats lists them with the rest: data.problems)
    for split, root in split_roots.items():
        paths, labels = [], []
        for d in _class_dirs(root):
            name = class_name(d.name)
            if name not in index:
                problems.append(
                    (
                        ("unknown class", split, name),
                        f"{d}: class {name!r} is not among the training classes "
                        f"({', '.join(classes)}); every split must use the same class "
                        "folders",
                    )
                )
                continue
            files, left_out = _list_class_dir(d)
            ignored += left_out
            if not files and split in ("train", "all"):
                why = f"; {left_out[0].path}: {left_out[0].reason}" if left_out else ""
                problems.append(
                    (
                        ("no training image", name),
                        f"{d}: class folder is empty (no "
                        f"image files{why}); add images or remove it",
                    )
                )
            paths += files
            labels += [index[name]] * len(files)
        split_files[split] = (paths, labels)
    report_problems(problems)
    log_ignored(str(folder), ignored)

    source = _build_file_source(
        str(folder), "folder", classes, split_files, channels, max_bad_fraction, ignored
    )
    if not presplit:
        full = source.splits.pop("all")
        parts = stratified_split(full.labels, {"val": val_ratio, "test": test_ratio}, seed)
        source.splits = {k: full.subset(v) for k, v in parts.items()}
    elif "val" not in source.splits:
        source.splits = carve_val(source.splits, val_ratio, seed)
    return check_splits(source) if check else source
