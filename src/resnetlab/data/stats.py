"""Data set statistics: class counts, image sizes, unreadable files, mean/std.

Mean and std are those of what the model is given: every image at the training resolution
(the square the in-memory cache holds, or a file decoded to it), each image weighing the
same. They come from each image's own mean and mean square (``image_moments``), summed in
integers a bounded chunk at a time, so no float copy of a data set is ever made.
"""

from __future__ import annotations

import numpy as np
import torch

from ..tasks import task_of
from .decode import Unreadable, decode_files
from .images import image_to_uint8
from .loader import cache_geometry, cache_size
from .moments import image_moments, stats_from_moments
from .sources import SHOW_SKIPPED, Source, Split, keep_readable, settle_bad_files
from .stream import shard_moments
from .transforms import default_preset, size_from_images

# Above this largest/smallest class ratio, stats and train say so and name the remedies; a
# common rule of thumb (3:1 is where plain cross-entropy starts to favour the big classes).
IMBALANCE_WARN = 3.0


def imbalance_ratio(counts) -> float:
    """Largest over smallest class count (classes with no image left out); 0 when empty."""
    nonzero = [int(c) for c in (counts.values() if hasattr(counts, "values") else counts) if c]
    return max(nonzero) / min(nonzero) if nonzero else 0.0


def imbalance_note(counts, threshold: float = IMBALANCE_WARN) -> str | None:
    """One line naming the imbalance and the options for it, when above ``threshold``:1;
    ``counts`` is ``{class: count}`` (or a list)."""
    ratio = imbalance_ratio(counts)
    if ratio <= threshold:
        return None
    where = ""
    if hasattr(counts, "items"):
        big = max(counts.items(), key=lambda kv: kv[1])
        small = min(((k, v) for k, v in counts.items() if v), key=lambda kv: kv[1])
        where = f" ({big[0]} {big[1]:,} vs {small[0]} {small[1]:,})"
    return (
        f"imbalanced classes: largest/smallest = {ratio:.1f}:1{where}, above "
        f"{threshold:g}:1; consider train --class-weights auto (or effective) or "
        "--sampler balanced, and judge by balanced accuracy and macro-F1"
    )


def split_moments(
    split: Split, channels: int, geometry=None, desc: str | None = None, limit: int | None = None
) -> np.ndarray:
    """``image_moments`` of each readable image of ``split``: in memory as it is stored; files
    decoded through ``geometry`` (PIL image -> uint8 tensor; None: at their own size); shards
    the first ``limit`` samples. ``desc``: the decoding's progress line."""
    if split.shards is not None:
        return shard_moments(split.shards, channels, limit, geometry)
    if split.images is not None:
        return image_moments(split.images)

    def take(_, img):
        return image_moments(geometry(img) if geometry is not None else image_to_uint8(img))[0]

    found = [
        r
        for r in decode_files(split.paths or [], channels, take, desc)
        if not isinstance(r, Unreadable)
    ]
    return np.stack(found) if found else np.zeros((0, 2, channels))


def channel_stats(
    splits: list[Split], channels: int, geometry=None, desc: str | None = None
) -> tuple[list[float], list[float]]:
    """Mean and std of the images of ``splits``, each image weighing the same, files decoded
    through ``geometry`` (the training resolution; None: their own size)."""
    found = [split_moments(s, channels, geometry, desc) for s in splits]
    return stats_from_moments(np.concatenate(found) if found else np.zeros((0, 2, channels)))


def training_resolution(source: Source, input_size: int | None = None) -> tuple[str, int, int]:
    """(preset, input size, stored side) of a new run from scratch on ``source`` (as
    ``DataPipeline`` chooses them): the side is the square each training image is kept at."""
    preset = default_preset(source.kind)
    size = input_size or (224 if preset == "imagenet" else 32)
    train = source.splits.get("train")
    if input_size is None and train is not None and train.sizes:
        preset, size, _ = size_from_images(train.sizes, source.channels)
    return preset, size, cache_size(preset, size)


def _source_moments(
    source: Source, input_size: int | None, progress: bool
) -> tuple[np.ndarray, dict]:
    """The one decode of every file of ``source`` not yet checked (the unreadable ones join
    ``bad_files``), taking the training images' moments at the training resolution on the
    way; and where they were taken (``stats_at`` of the report)."""
    preset, size, side = training_resolution(source, input_size)
    name = "train" if "train" in source.splits else next(iter(source.splits), None)
    geometry = cache_geometry(preset, size)
    moments = np.zeros((0, 2, source.channels))
    for split_name in list(source.splits):
        split = source.splits[split_name]
        if split_name == name:
            desc = f"reading {split_name} images at {side}x{side}" if progress else None
            if split.checked or split.paths is None:
                moments = split_moments(split, source.channels, geometry, desc, limit=None)
                continue
            results = decode_files(
                split.paths, source.channels, lambda _, img: image_moments(geometry(img))[0], desc
            )
            keep = keep_readable(source, split_name, results)
            moments = np.stack([results[i] for i in keep]) if keep else moments
        elif not split.checked and split.paths is not None:
            desc = f"checking {split_name} images" if progress else None
            keep_readable(
                source, split_name, decode_files(split.paths, source.channels, None, desc)
            )
    settle_bad_files(source)
    in_memory = name is not None and source.splits[name].images is not None
    shape = list(source.splits[name].images.shape[-2:]) if in_memory else [side, side]
    return moments, {"split": name, "images": len(moments), "size": shape}


def missing_classes(source: Source) -> dict[str, list[str]]:
    """Per held-out split, the classes it has no image of (their scores there are undefined:
    ``evaluate`` says "no images"); splits streamed without class counts are left out."""
    out = {}
    for name, split in source.splits.items():
        if name == "train" or (split.shards is not None and split.shards.class_counts is None):
            continue
        gaps = [c for c, n in source.class_counts(name).items() if n == 0]
        if gaps:
            out[name] = gaps
    return out


def _sizes(split: Split) -> list[tuple[int, int]]:
    if split.images is not None:
        return [tuple(split.images.shape[-2:])] * len(split)
    return list(split.sizes or [])


def dataset_stats(source: Source, input_size: int | None = None, progress: bool = False) -> dict:
    """The report behind ``resnetlab stats``; keys as in the architecture contract. Files not
    yet checked (``load_source(check=False)``) are decoded here, once each; mean and std are
    the training split's at the training resolution (``input_size``, else the one a new run
    chooses), each image weighing the same: what ``train`` computes with the same flags.
    ``progress``: the decoding's progress on stderr."""
    moments, stats_at = _source_moments(source, input_size, progress)
    mean, std = stats_from_moments(moments)
    splits = list(source.splits.values())
    sizes = [s for split in splits for s in _sizes(split)]
    if sizes:
        hs, ws = np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])
        by_area = sorted(sizes, key=lambda s: (s[0] * s[1], s))
        size_info = {
            "min": [int(hs.min()), int(ws.min())],
            "max": [int(hs.max()), int(ws.max())],
            "median": [int(np.median(hs)), int(np.median(ws))],
            "smallest": list(by_area[0]),
            "largest": list(by_area[-1]),
        }
    else:  # shards whose index records no sizes: unknown, not zero
        size_info = {"min": None, "max": None, "median": None}
    sampled = sum(s.shards is not None and bool(s.sizes) for s in splits)
    if sampled:
        size_info["sampled"] = len(sizes)  # shards: the sample their index keeps
    counts = source.class_counts()
    extra = _TASK_STATS[source.task.name](source)
    return {
        "data": source.name,
        "num_images": sum(len(s) for s in splits),
        "classes": counts,
        "splits": {k: len(v) for k, v in source.splits.items()},
        "bad_files": [{"path": b.path, "reason": b.reason} for b in source.bad_files],
        "ignored_files": source.ignored_files,
        "ignored": [{"path": b.path, "reason": b.reason} for b in source.ignored],
        "channels": source.channels,
        "mean": mean,
        "std": std,
        "stats_at": stats_at,
        "sizes": size_info,
        "missing": missing_classes(source),
        "problems": [],  # what stops a run; cmd_stats collects them (data.problems)
        "imbalance": imbalance_ratio(counts),
        # The remedies it names weigh single-label classes; multi-label labels are not rivals.
        "imbalance_note": imbalance_note(counts) if source.task.warns_imbalance else None,
        **extra,
    }


def label_stats(source: Source) -> dict:
    """Multi-label data: labels per image, images without a label, and how often each pair of
    labels occurs together (``co_occurrence[a][b]``: images with both; the diagonal is each
    label's own count)."""
    rows = [s.labels > 0.5 for s in source.splits.values() if s.shards is None and len(s)]
    truth = torch.cat(rows) if rows else torch.zeros(0, len(source.classes), dtype=torch.bool)
    per_image = truth.sum(1)
    both = (truth.T.double() @ truth.double()).long().tolist()
    return {
        "task": "multilabel",
        "labels_per_image": {
            "mean": float(per_image.double().mean()) if len(truth) else 0.0,
            "max": int(per_image.max()) if len(truth) else 0,
            "none": int((per_image == 0).sum()),
        },
        "co_occurrence": {
            a: {b: both[i][j] for j, b in enumerate(source.classes)}
            for i, a in enumerate(source.classes)
        },
    }


# what a data report adds for each task
_TASK_STATS = {"multiclass": lambda source: {}, "multilabel": label_stats}


def _co_occurrence_lines(report: dict, names: list[str]) -> list[str]:
    """Labels per image and the co-occurrence table (the 12 most frequent labels)."""
    from ..core.fmt import ljust, rjust, width

    per = report["labels_per_image"]
    lines = [
        f"per image {per['mean']:.2f} labels on average, at most {per['max']}; "
        f"{per['none']:,} image(s) with none"
    ]
    shown = sorted(names, key=lambda n: -report["classes"][n])[:12]
    co = report["co_occurrence"]
    cols = max(map(width, shown)) if shown else 0
    cell = max(6, *(width(n) for n in shown)) if shown else 6
    lines.append(
        "together  images with both labels"
        + (f" (the {len(shown)} most frequent of {len(names)})" if len(shown) < len(names) else "")
    )
    lines.append("  " + " " * cols + "".join("  " + rjust(n, cell) for n in shown))
    for a in shown:
        lines.append(
            "  " + ljust(a, cols) + "".join("  " + rjust(f"{co[a][b]:,}", cell) for b in shown)
        )
    return lines


def format_report(report: dict) -> str:
    """The data set doctor's report (``dataset_stats``) as the text ``resnetlab stats`` prints."""
    from ..core.fmt import ljust, width

    lines = [f"data      {report['data']}  ({report['channels']} channel(s))"]
    splits = ", ".join(f"{k} {v:,}" for k, v in report["splits"].items())
    lines.append(f"images    {report['num_images']:,} readable  ({splits})")
    counts = report["classes"]
    task = task_of(report.get("task"))
    kind = f"{task.kinds:<7}"
    lines.append(f"{kind}   {len(counts)}  (largest/smallest = {report['imbalance']:.2f})")
    cols = max(map(width, counts)) if counts else 0
    top = max(counts.values()) if counts else 1
    for name, n in counts.items():
        bar = "#" * max(1, round(30 * n / top)) if n else ""
        lines.append(f"  {ljust(name, cols)}  {n:7,}  {bar}")
    if "co_occurrence" in report:  # multi-label: which labels come together
        lines += _co_occurrence_lines(report, list(counts))
    sz = report["sizes"]
    if sz["min"] is None:
        lines.append(
            "sizes     unknown (the shards' index records none; write them again with shard)"
        )
    else:
        lines.append(
            f"sizes     min {sz['min'][0]}x{sz['min'][1]}, median {sz['median'][0]}x"
            f"{sz['median'][1]}, max {sz['max'][0]}x{sz['max'][1]} (h x w)"
            + (f", of {sz['sampled']} the shards' index keeps" if sz.get("sampled") else "")
        )
    bad = report["bad_files"]
    lines.append(f"unreadable {len(bad)} file(s)" + (":" if bad else ""))
    lines += [f"  {b['path']}: {b['reason']}" for b in bad]
    problems = report.get("problems") or []
    if problems:
        lines.append(f"problems  {len(problems)} that stop train:")
        lines += [f"  {p}" for p in problems]
    for split, names in (report.get("missing") or {}).items():
        lines.append(
            f"missing   the {split} split has no images of {len(names)} class(es): "
            f"{', '.join(names)} (evaluate says 'no images' for them)"
        )
    note = report.get("imbalance_note")
    if note is None and report.get("imbalance", 0.0) > IMBALANCE_WARN:  # an older report
        note = imbalance_note(counts)
    if note:
        lines.append(f"warning   {note}")
    if report["ignored_files"]:
        # Images without an image extension first: those are the ones a user wants back.
        named = sorted(report.get("ignored", []), key=lambda b: "image without" not in b["reason"])
        lines.append(
            f"ignored   {report['ignored_files']} file(s) not named as images"
            + (":" if named else "")
        )
        lines += [f"  {b['path']}: {b['reason']}" for b in named[:SHOW_SKIPPED]]
        if len(named) > SHOW_SKIPPED:
            lines.append(f"  ... and {len(named) - SHOW_SKIPPED} more (--json lists them all)")
    mean = " ".join(f"{v:.4f}" for v in report["mean"])
    std = " ".join(f"{v:.4f}" for v in report["std"])
    lines += [f"mean      {mean}", f"std       {std}"]
    at = report.get("stats_at")
    if at and at["split"]:
        lines.append(
            f"          of the {at['split']} split's {at['images']:,} images, each at "
            f"{at['size'][0]}x{at['size'][1]} as training keeps it and weighing the "
            "same"
        )
    lines.append(f"suggested: --mean {mean} --std {std}")
    return "\n".join(lines)
