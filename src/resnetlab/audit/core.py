"""``resnetlab audit DATA``: duplicates, leaks between splits and likely wrong labels, found
without changing anything the user owns; files to leave out and labels to correct are
written only where asked, for ``train --exclude`` and ``train --relabel``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.fmt import pct, shell_command, table
from ..data import load_source
from ..data.curate import pixel_hash, write_exclude, write_relabel
from ..data.sources import Source
from . import labels as L
from .duplicates import NEAR_BITS, describe, find_duplicates
from .scan import PIXEL_SIDE, Items, scan

SHOW_GROUPS = 10  # groups and label issues the table shows (--json and the page: all)
SHOW_ISSUES = 15
# Below this out-of-fold accuracy the label model's suggestions are said to be weak.
WEAK_MODEL = 0.8


@dataclass
class AuditResult:
    report: dict
    source: Source
    items: Items
    # --labels: the out-of-fold probabilities ranked with (N, classes), NaN rows for images
    # without one
    probs: np.ndarray | None = None


def _load(data: str, **options) -> Source:
    quiet = logging.getLogger("resnetlab.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # unreadable files are listed in the report instead
    try:
        return load_source(data, max_bad_fraction=1.0, **options)
    finally:
        quiet.setLevel(level)


def run_features(
    run: str, source: Source, refs: list[str] | None = None, batch_size: int = 64
) -> tuple[np.ndarray, str]:
    """The pooled features (N, F) a trained model gives every image of ``source``, in split
    order, preprocessed as the model's metadata says; and what they are, in words. ``refs``:
    the scan's names of the images, by which a split of shards places its rows (zeros for a
    sample the stream could not read)."""
    from ..inference.loading import load_model, run_pipeline

    loaded = load_model(run)
    # A copy: the pipeline may cache decoded images in its source, the audit keeps the files.
    pipe = run_pipeline(
        loaded,
        batch_size=batch_size,
        num_workers=0,
        source=replace(source, splits=dict(source.splits)),
    )
    model = loaded.model.eval()
    out = []
    with torch.inference_mode():
        start = 0  # where each split's images start in the scan's order
        for split, s in source.splits.items():
            loader, tf = pipe.split_loader(split, channels_last=False)
            n = s.shards.count if s.shards is not None else len(s)
            if s.shards is not None:
                # A stream leaves unreadable samples out: each row is placed by its name.
                loader.return_keys = True
                place = {name: k for k, name in enumerate(refs[start : start + n])}
                rows = None
                for x, _, names in loader:
                    f = _pooled(model, tf(x))
                    if rows is None:
                        rows = np.zeros((n, f.shape[1]), np.float32)
                    rows[[place[name] for name in names]] = f
                if rows is not None:
                    out.append(rows)
            else:
                out += [_pooled(model, tf(x)) for x, _ in loader]
            start += n
    width_ = getattr(model, "num_features", out[0].shape[1] if out else 0)
    return np.concatenate(out), f"features of {run} ({loaded.meta.model}, {width_} per image)"


def _pooled(model, x: torch.Tensor) -> np.ndarray:
    f = model.forward_features(x).float()
    if f.ndim == 4:  # the last stage's feature map: pooled as the head pools it
        f = f.mean(dim=(2, 3))
    return f.cpu().numpy()


def audit(
    data: str,
    *,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    channels: int | None = None,
    download: bool = False,
    task: str = "multiclass",
    near: bool = True,
    labels: bool = False,
    run: str | None = None,
    oof: str | None = None,
    folds: int = L.FOLDS,
) -> AuditResult:
    """Audit ``data`` as ``train`` would load it (same splits for the same ratios and seed):
    duplicate groups always; label issues with ``labels`` (probabilities from ``oof``, else a
    logistic regression cross-validated on ``run``'s features or on the pixels)."""
    start = time.perf_counter()
    labels = labels or bool(oof)
    if run and channels is None:
        from ..inference.loading import load_model

        channels = load_model(run).meta.in_chans  # the model reads its own channel count
    source = _load(
        data,
        val_ratio=val_ratio,
        test_ratio=test_ratio,
        seed=seed,
        channels=channels,
        download=download,
        task=task,
    )
    if labels:
        source.task.require("label_audit")
    items = scan(source, features=labels and not run and not oof)
    found: dict = {}
    groups = find_duplicates(items, near=near, **({"info": found} if near else {}))
    report = {
        "data": source.name,
        "channels": source.channels,
        "num_images": len(items),
        "splits": {k: len(v) for k, v in source.splits.items()},
        "classes": list(source.classes),
        "unreadable": [
            {"path": p, "reason": r}
            for p, r in [(b.path, b.reason) for b in source.bad_files] + items.errors
        ],
        "duplicates": groups,
        "duplicate_summary": {**_summary(groups), "near_bits": found.get("near_bits")},
        "label_issues": None,
        "label_model": None,
    }
    probs = None
    if labels:
        report["label_issues"], report["label_model"], probs = _label_issues(
            items, source, run, oof, folds, seed
        )
    report["seconds"] = round(time.perf_counter() - start, 2)
    return AuditResult(report, source, items, probs)


def _summary(groups: list[dict]) -> dict:
    return {
        "groups": len(groups),
        "images": sum(len(g["paths"]) for g in groups),
        "exact": sum(g["kind"] == "exact" for g in groups),
        "near": sum(g["kind"] == "near" for g in groups),
        "leaks": sum(g["leak"] for g in groups),
        "conflicts": sum(g["conflict"] for g in groups),
        "to_exclude": sum(len(g["exclude"]) for g in groups),
    }


def _label_issues(items: Items, source: Source, run, oof, folds: int, seed: int):
    y = items.label_index
    k = len(source.classes)
    ok = items.valid.copy()
    if oof:
        probs = L.read_oof(oof, items.refs, source.classes)
        ok &= ~np.isnan(probs).any(1)
        model = {
            "source": "oof",
            "description": f"out-of-fold probabilities of {oof}",
            "folds": None,
        }
    else:
        if run:
            features, what = run_features(run, source, items.refs)
            model = {"source": "run", "description": f"logistic regression on the {what}"}
        else:
            features = items.pixels.astype(np.float32)
            model = {
                "source": "pixels",
                "description": "logistic regression on an RBF kernel "
                f"of the pixels at {PIXEL_SIDE}x{PIXEL_SIDE}",
            }
        probs = np.full((len(items), k), np.nan)
        idx = np.nonzero(ok)[0]
        probs[idx], _, used = L.cross_validated_probs(
            features[idx], y[idx], k, folds, seed, kernel=not run
        )
        model["folds"] = used
    idx = np.nonzero(ok)[0]
    probs[~ok] = np.nan
    probs[idx] = probs[idx] / np.maximum(probs[idx].sum(1, keepdims=True), 1e-12)
    p = probs[idx]
    accuracy = float((p.argmax(1) == y[idx]).mean()) if len(idx) else None
    joint = L.confident_joint(y[idx], p) if len(idx) else np.zeros((k, k))
    noise = 1.0 - float(np.trace(joint)) / max(float(joint.sum()), 1.0)
    model.update(accuracy=accuracy, images=int(len(idx)), estimated_noise=noise)
    found = L.find_label_issues(y[idx], p)
    issues = []
    for rank in found.tolist():
        i = int(idx[rank])
        given, suggested = int(y[i]), int(p[rank].argmax())
        issues.append(
            {
                "path": items.refs[i],
                "split": str(items.split[i]),
                "given": source.classes[given],
                "suggested": source.classes[suggested],
                "score": round(1.0 - float(p[rank, given]), 4),
                "probability": round(float(p[rank, suggested]), 4),
                "given_probability": round(float(p[rank, given]), 4),
                "_index": i,
            }
        )
    return issues, model, probs


def public(report: dict) -> dict:
    """The report without the fields for internal use (``_index``)."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if not k.startswith("_")}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(report)


# ------------------------------------------------------------------------------- files


def _memory_pixels(result: AuditResult, index: int) -> str | None:
    items, source = result.items, result.source
    s = source.splits[str(items.split[index])]
    if s.images is None:
        return None
    return pixel_hash(s.images[int(items.index[index])])  # as stored: (C, H, W)


def _check_new(path: str | Path, flag: str) -> Path:
    """Files the audit writes are new files: one that exists (an edited relabel CSV, say) is
    never overwritten."""
    path = Path(path)
    if path.exists():
        raise ConfigError(
            f"{flag} {path}: the file exists; give a new name (nothing is overwritten)"
        )
    return path


def write_exclude_file(result: AuditResult, path: str | Path) -> tuple[Path, int]:
    """The images the duplicate groups say to leave out; how many."""
    path = _check_new(path, "--write-exclude")
    index = {ref: k for k, ref in enumerate(result.items.refs)}
    rows, seen = [], set()
    for n, g in enumerate(result.report["duplicates"], start=1):
        why = f"group {n}, {g['kind']}: {describe(g)}"
        for ref in g["exclude"]:
            if ref not in seen:
                seen.add(ref)
                rows.append((ref, _memory_pixels(result, index[ref]), why))
    write_exclude(path, rows, result.report["data"])
    return path, len(rows)


def write_relabel_file(result: AuditResult, path: str | Path) -> tuple[Path, int]:
    """A CSV of the label issues (path, given, label = the suggestion, probability)."""
    path = _check_new(path, "--write-relabel")
    issues = result.report["label_issues"]
    if issues is None:
        raise ConfigError("--write-relabel needs label issues: add --labels (or --oof FILE)")
    rows = [
        {
            "ref": r["path"],
            "given": r["given"],
            "suggested": r["suggested"],
            "probability": r["probability"],
            "pixels": _memory_pixels(result, r["_index"]),
        }
        for r in issues
    ]
    memory = any(r["pixels"] for r in rows)
    write_relabel(path, rows, memory)
    return path, len(rows)


# ------------------------------------------------------------------------------ text


def format_audit(report: dict) -> str:
    """The audit as ``resnetlab audit`` prints it."""
    splits = ", ".join(f"{k} {v:,}" for k, v in report["splits"].items())
    lines = [
        f"data        {report['data']}  ({report['channels']} channel(s))",
        f"images      {report['num_images']:,} ({splits}), {len(report['classes'])} classes, "
        f"audited in {report['seconds']:.1f} s",
    ]
    bad = report["unreadable"]
    if bad:
        lines.append(f"unreadable  {len(bad)} file(s), left out of the audit:")
        lines += [f"  {b['path']}: {b['reason']}" for b in bad[:SHOW_GROUPS]]
    s = report["duplicate_summary"]
    if s.get("near_bits") is not None and s["near_bits"] < NEAR_BITS:
        lines.append(
            f"note        near copies: pHash pairs within {s['near_bits']} bits, not "
            f"{NEAR_BITS}: the images look much alike (the pairs to compare are kept "
            "to a few million)"
        )
    if not s["groups"]:
        lines.append("duplicates  none (exact or near)")
    else:
        lines.append(
            f"duplicates  {s['groups']} group(s) of {s['images']} images: {s['exact']} exact, "
            f"{s['near']} near; {s['leaks']} leak(s) across splits, {s['conflicts']} label "
            f"conflict(s); {s['to_exclude']} image(s) to leave out"
        )
        rows = []
        for n, g in enumerate(report["duplicates"][:SHOW_GROUPS], start=1):
            rows.append([str(n), g["kind"], str(len(g["paths"])), describe(g)])
            for m in g["members"]:
                out = "  (leave out)" if m["path"] in g["exclude"] else ""
                rows.append(["", "", "", f"  {m['path']}  {m['split']}, {m['label']}{out}"])
        lines.append(_indent(table(["#", "kind", "images", "what"], rows, right_from=9)))
        if len(report["duplicates"]) > SHOW_GROUPS:
            lines.append(
                f"  ... and {len(report['duplicates']) - SHOW_GROUPS} more groups "
                "(--json and --html list them all)"
            )
    model = report.get("label_model")
    if model is not None:
        issues = report["label_issues"]
        folds = f", {model['folds']}-fold" if model.get("folds") else ""
        lines.append(
            f"labels      {len(issues)} likely wrong of {model['images']:,} (confident "
            f"learning; {model['description']}{folds}: accuracy {pct(model['accuracy'], 1)}, "
            f"estimated label noise {pct(model['estimated_noise'], 1)})"
        )
        if issues:
            rows = [
                [
                    r["path"],
                    r["split"],
                    r["given"],
                    r["suggested"],
                    f"{r['probability']:.2f}",
                    f"{r['given_probability']:.2f}",
                ]
                for r in issues[:SHOW_ISSUES]
            ]
            head = ["image", "split", "given", "suggested", "p(suggested)", "p(given)"]
            lines.append(_indent(table(head, rows, right_from=4)))
            if len(issues) > SHOW_ISSUES:
                lines.append(
                    f"  ... and {len(issues) - SHOW_ISSUES} more (--json and --html list them all)"
                )
        if (model["accuracy"] or 0) < WEAK_MODEL:
            better = {
                "pixels": "give --run RUN (a trained model's features) or train --folds K "
                "and --oof",
                "run": "train the run longer, or train --folds K and --oof",
                "oof": "train the folds longer",
            }[model["source"]]
            lines.append(
                f"note        the label model is right on {pct(model['accuracy'], 0)} of the "
                "images only: many of these are its own mistakes, not the labels'; " + better
            )
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def next_steps(report: dict, data: str, written: dict[str, str], label_flags=()) -> list[str]:
    """Commands that use what was written, or that write it (``label_flags``: how the label
    issues were found, e.g. ``["--labels", "--run", RUN]``)."""
    extra = []
    if "exclude" in written:
        extra += ["--exclude", written["exclude"]]
    if "relabel" in written:
        extra += ["--relabel", written["relabel"]]
    if extra:
        return [shell_command("resnetlab", "train", "--data", data, *extra)]
    flags = []
    if report["duplicate_summary"]["to_exclude"]:
        flags += ["--write-exclude", "exclude.txt"]
    if report.get("label_issues"):
        flags += ["--write-relabel", "relabel.csv", *label_flags]
    return [shell_command("resnetlab", "audit", data, *flags)] if flags else []


__all__ = ["AuditResult", "audit", "format_audit", "public"]
