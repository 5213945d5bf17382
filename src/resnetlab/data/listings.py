"""Images listed in a file: ``csv:FILE`` and ``jsonl:FILE`` (path, label, optional split; one
or several labels a row for multi-label), read into a ``Source`` like a folder."""

from __future__ import annotations

import csv
from pathlib import Path

from ..core.errors import DataError
from ..tasks import Task, task_of
from .sources import (
    SPLITS,
    Source,
    _build_file_source,
    check_splits,
    class_name,
    stratified_split,
)


def load_listing_source(
    kind: str,
    path: Path,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    channels: int,
    max_bad_fraction: float,
    multilabel: bool = False,
    check: bool = True,
) -> Source:
    """``csv:FILE`` or ``jsonl:FILE`` (``kind``): a listing of image files and their labels,
    paths relative to the listing; a split given for every image or for none."""
    task = task_of(multilabel)
    records = (_csv_records if kind == "csv" else _jsonl_records)(path, task)
    source = _labelled_files_source(
        f"{kind}:{path}",
        kind,
        path,
        records,
        val_ratio,
        test_ratio,
        seed,
        channels,
        max_bad_fraction,
        task,
    )
    return check_splits(source) if check else source


def _csv_records(path: Path, task: Task) -> list[tuple[str, str, str, str]]:
    """Rows of ``path,label`` (an optional third column ``split``, in every row or in none).
    Multi-label ``task``: the second column holds the image's labels separated by ``|`` (it may be
    empty: an image with none of the labels). Errors name the line of the file."""
    if not path.is_file():
        raise DataError(f"csv:{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"csv:{path}: cannot read ({exc})") from None
    if rows and [c.strip().lower() for c in rows[0][1][:2]] in (
        ["path", "label"],
        ["path", "labels"],
    ):
        rows = rows[1:]
    if not rows:
        raise DataError(f"csv:{path}: no rows; expected 'path,label' lines")
    shape, several = task.csv_shape, task.csv_hint
    records = []
    for n, row in rows:
        while len(row) > 2 and not row[-1].strip():  # trailing empty cells
            row = row[:-1]
        if (
            len(row) > 3
            or len(row) < 2
            or not row[0].strip()
            or not (task.may_be_unlabelled or row[1].strip())
        ):
            raise DataError(f"csv:{path}: line {n} {row!r} is not '{shape}'{several}")
        split = row[2].strip() if len(row) == 3 else ""
        if split and split not in SPLITS:
            raise DataError(
                f"csv:{path}: line {n}: split {split!r} is not one of {', '.join(SPLITS)}"
                + task.split_hint
            )
        records.append((row[0].strip(), row[1], split, f"line {n}"))
    return records


def _jsonl_records(path: Path, task: Task) -> list[tuple[str, str, str, str]]:
    """JSON lines, one image each: ``{"path": ..., "label": "cat"}`` or, for multi-label data,
    ``{"path": ..., "labels": ["cat", "outdoor"]}``; an optional ``"split"``."""
    import json

    if not path.is_file():
        raise DataError(f"jsonl:{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"jsonl:{path}: cannot read ({exc})") from None
    key = task.label_column
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"jsonl:{path}: line {n} is not JSON ({exc.msg})") from None
        labels = obj.get(key, obj.get("label")) if isinstance(obj, dict) else None
        labels = task.cell_text(labels, f"jsonl:{path}: line {n}")
        if not (
            isinstance(obj, dict)
            and isinstance(obj.get("path"), str)
            and obj["path"].strip()
            and isinstance(labels, str)
            and (task.may_be_unlabelled or labels.strip())
        ):
            raise DataError(f"jsonl:{path}: line {n} is not {task.jsonl_shape}{task.jsonl_hint}")
        records.append((obj["path"].strip(), labels, str(obj.get("split", "")), f"line {n}"))
    if not records:
        raise DataError(f"jsonl:{path}: no lines; expected one JSON object per image")
    return records


def _labelled_files_source(
    name: str,
    kind: str,
    listing: Path,
    records: list[tuple[str, str, str, str]],
    val_ratio: float,
    test_ratio: float,
    seed: int,
    channels: int,
    max_bad_fraction: float,
    task: Task,
) -> Source:
    """A source from (path, label text, split, where) records of a listing file: paths
    relative to the file; split in every record or in none."""

    def names(text: str) -> list[str]:  # in NFC: one spelling of each name (see class_name)
        return sorted({class_name(t) for t in task.label_texts(text)})

    task.check_cells(name, records)
    classes = sorted({c for r in records for c in names(r[1])})
    if not classes:
        raise DataError(f"{name}: no image has a label; give each image at least one")
    index = {c: i for i, c in enumerate(classes)}
    with_split = [r for r in records if r[2].strip()]
    if with_split and len(with_split) < len(records):
        lacking = next(r for r in records if not r[2].strip())
        raise DataError(
            f"{name}: {lacking[3]} has no split but {with_split[0][3]} has one; give a split "
            "(train, val, test) for every image or for none"
        )
    has_split = bool(with_split)
    split_files: dict[str, tuple[list[Path], list]] = {}
    for p_text, label_text, split, where in records:
        split = split.strip() if has_split else "all"
        if has_split and split not in SPLITS:
            raise DataError(f"{name}: {where}: split {split!r} is not one of {', '.join(SPLITS)}")
        p = Path(p_text)
        p = p if p.is_absolute() else listing.parent / p
        paths, labels = split_files.setdefault(split, ([], []))
        paths.append(p)
        found = [index[c] for c in names(label_text)]
        labels.append(task.target(found))
    try:
        source = _build_file_source(
            name, kind, classes, split_files, channels, max_bad_fraction, [], task.multilabel
        )
    except DataError:
        paths = [p for ps, _ in split_files.values() for p in ps]
        if paths and not any(p.exists() for p in paths):
            raise DataError(
                f"{name}: none of its {len(paths)} files exists (the first: {paths[0]}); paths "
                f"in a listing are relative to the listing's folder ({listing.parent})"
            ) from None
        raise
    if not has_split:
        full = source.splits.pop("all")
        parts = stratified_split(full.labels, {"val": val_ratio, "test": test_ratio}, seed)
        source.splits = {k: full.subset(v) for k, v in parts.items()}
    elif "train" not in source.splits:
        raise DataError(f"{name}: no image has split 'train'")
    return source
