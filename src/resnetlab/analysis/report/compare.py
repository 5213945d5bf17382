"""``resnetlab compare RUN RUN...``: runs side by side, in the terminal and as one HTML page.

What differs between the runs' settings (config.yaml), their scores next to each other (the
best of each row marked), their learning curves overlaid, and the classes on which they differ
most (per-class F1, or AP for multi-label runs, on the same split). The page is one file with
everything inline (styles, SVG charts): it opens offline, from an e-mail or a CI artefact.

The per-class numbers come from each run's ``eval-SPLIT/metrics.json`` (``resnetlab
evaluate``) when it has one; otherwise the run is evaluated now, its files kept in a temporary
folder, so the run folders are only read.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from ...artifacts.run import RunDir
from ...core.errors import ConfigError, MissingFileError, ResnetlabError
from ...core.fmt import pct
from ...tasks import Task, task_of
from .runs import aligned, duration, run_row

# Settings that name where a run is, not what it computes.
_PLACE = ("out", "name")
# Colours of the runs, in order (matplotlib's tab10: tells ten runs apart, also in print).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
SPARKS = "▁▂▃▄▅▆▇█"


def _labels(runs: Sequence[RunDir]) -> list[str]:
    """Short names that tell the runs apart: the folder names, with their parents where two
    are alike."""
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def _setting(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return str(v)


def _per_class(run: RunDir, split: str, evaluate: bool, device: str) -> tuple[dict, str]:
    """``(per_class, where)``: the run's per-class metrics on ``split`` and where they came
    from; ``({}, why)`` when there are none."""
    saved = run.eval_dir(split) / "metrics.json"
    try:
        data = json.loads(saved.read_text(encoding="utf-8"))
        if data.get("split") == split and isinstance(data.get("per_class"), dict):
            return data, str(saved)
    except (OSError, ValueError):
        pass
    if not evaluate:
        return {}, f"no {saved} (run `resnetlab evaluate {run.path} --split {split}`)"
    if not run.meta.is_file():
        return {}, f"no {run.META}: nothing to evaluate"
    from ..evaluate import evaluate_run

    with tempfile.TemporaryDirectory(prefix="resnetlab-compare-") as tmp:
        try:
            data = evaluate_run(
                str(run.path),
                split=split,
                out_dir=tmp,
                backend="torch",
                precision="fp32",
                device=device,
                gradcam=False,
            )
        except ResnetlabError as exc:
            return {}, f"not evaluated: {exc}"
    return data, f"evaluated now on {split}"


def compare_runs(
    runs: Sequence[str | os.PathLike],
    split: str | None = None,
    evaluate: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Everything ``compare`` shows, as data: ``runs`` (their ``runs`` rows), ``settings``
    (each setting that differs: one value per run), ``metrics`` (name -> values, with which is
    best), ``curves`` (per run: epoch, losses, validation score), ``per_class`` (class ->
    values per run, largest spread first) and ``split``. ``evaluate``: evaluate the runs that
    have no saved evaluation on ``split`` (default: test where every run has one, else val)."""
    if len(runs) < 2:
        raise ConfigError("compare needs two or more runs: resnetlab compare RUN RUN ...")
    dirs = []
    for r in runs:
        rd = RunDir(r)
        if not rd.has_config():
            raise MissingFileError(
                f"{r}: not a run folder (no {rd.CONFIG}); give run folders, "
                "e.g. from `resnetlab runs`"
            )
        dirs.append(rd)
    labels = _labels(dirs)
    rows = [run_row(rd) for rd in dirs]
    summaries = [rd.read_summary() for rd in dirs]
    task = task_of(any(task_of(r["task"]).multilabel for r in rows))
    # settings that differ
    configs = [{k: v for k, v in r["config"].items() if k not in _PLACE} for r in rows]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    settings = {}
    for k in keys:
        values = [c.get(k) for c in configs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            settings[k] = values
    # evaluations on one split
    if split is None:
        test_key = task.key("test")
        split = "test" if all(s.get(test_key) is not None for s in summaries) else "val"
    evals, sources = [], []
    for rd in dirs:
        data, where = _per_class(rd, split, evaluate, device)
        evals.append(data)
        sources.append(where)
    metrics = _metrics(rows, summaries, evals, task, split)
    curves = [_curve(rd, task) for rd in dirs]
    per_class = _per_class_table(evals, task)
    return {
        "labels": labels,
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in rows],
        "configs": [r["config"] for r in rows],
        "settings": settings,
        "metrics": metrics,
        "curves": dict(zip(labels, curves)),
        "split": split,
        "per_class_metric": task.per_class_metric,
        "per_class": per_class,
        "per_class_sources": dict(zip(labels, sources)),
        "task": task.name,
    }


# (label, summary key or evaluation key, which is better, how to show it)
_MULTICLASS = (
    ("best val top-1", "s:best_val_top1", "max", "pct"),
    ("test top-1", "s:test_top1", "max", "pct"),
    ("test top-5", "s:test_top5", "max", "pct"),
    ("{split} balanced accuracy", "e:balanced_accuracy", "max", "pct"),
    ("{split} macro-F1", "e:f1_macro", "max", "pct"),
    ("{split} loss", "e:loss", "min", "num"),
    ("temperature", "s:temperature", None, "num"),
    ("ECE before (val)", "s:ece_before", "min", "pct"),
    ("ECE after (val)", "s:ece_after", "min", "pct"),
)
_MULTILABEL = (
    ("best val mAP", "s:best_val_map", "max", "pct"),
    ("test mAP", "s:test_map", "max", "pct"),
    ("test F1 micro", "s:test_f1_micro", "max", "pct"),
    ("test F1 macro", "s:test_f1_macro", "max", "pct"),
    ("test exact match", "s:test_exact_match", "max", "pct"),
    ("{split} mAP", "e:map", "max", "pct"),
    ("{split} loss", "e:loss", "min", "num"),
)
_ROWS = {"multiclass": _MULTICLASS, "multilabel": _MULTILABEL}
_COMMON = (
    ("train time", "s:train_seconds", "min", "time"),
    ("train images/s", "s:train_images_per_second", "max", "rate"),
)


def _metrics(rows, summaries, evals, task: Task, split: str) -> list[dict]:
    out = [
        {"name": "state", "values": [r["state"] for r in rows], "better": None, "show": "text"},
        {
            "name": "epochs",
            "values": [f"{r['epochs_done']}/{r['epochs_planned']}" for r in rows],
            "better": None,
            "show": "text",
        },
        {
            "name": "best epoch",
            "values": [r["best_epoch"] for r in rows],
            "better": None,
            "show": "text",
        },
    ]
    for name, key, better, show in _ROWS[task.name] + _COMMON:
        where, k = key.split(":")
        values = [(s if where == "s" else e).get(k) for s, e in zip(summaries, evals)]
        values = [v if isinstance(v, (int, float)) else None for v in values]
        if all(v is None for v in values):
            continue
        out.append(
            {
                "name": name.format(split=split),
                "values": values,
                "better": better,
                "show": show,
                "best": _best(values, better),
            }
        )
    return out


def _best(values: list, better: str | None) -> list[int]:
    """Indices of the best value (ties share it); none when the values are all alike."""
    have = [v for v in values if v is not None]
    if better is None or len(have) < 2 or len(set(have)) == 1:
        return []
    top = max(have) if better == "max" else min(have)
    return [i for i, v in enumerate(values) if v == top]


def _curve(run: RunDir, task: Task) -> dict[str, list]:
    try:
        history = run.read_metrics()
    except (OSError, ValueError):
        history = []
    score = task.key("val")
    return {
        "epoch": [int(r["epoch"]) for r in history if r.get("epoch") is not None],
        "train_loss": [r.get("train_loss") for r in history],
        "val_loss": [r.get("val_loss") for r in history],
        "val_score": [r.get(score) for r in history],
        "lr": [r.get("lr") for r in history],
    }


def _per_class_table(evals: list[dict], task: Task) -> dict[str, list]:
    """class -> [metric per run (None where the run lacks the class or an evaluation)], the
    classes with the largest spread between runs first, then in their own order."""
    metric = task.per_class_metric
    classes = list(dict.fromkeys(c for e in evals for c in (e.get("per_class") or {})))
    table = {}
    for c in classes:
        table[c] = [((e.get("per_class") or {}).get(c) or {}).get(metric) for e in evals]

    def spread(c):
        have = [v for v in table[c] if v is not None]
        return max(have) - min(have) if len(have) > 1 else 0.0

    order = sorted(classes, key=lambda c: (-spread(c), classes.index(c)))
    return {c: table[c] for c in order}


# ----------------------------------------------------------------------------- terminal


def _show(v: Any, show: str) -> str:
    if v is None:
        return "-"
    if show == "pct":
        return pct(v)
    if show == "time":
        return duration(v)
    if show == "rate":
        return f"{v:,.0f}"
    if show == "num":
        return f"{v:.4g}"
    return str(v)


def sparkline(values: Sequence[float | None]) -> str:
    """``▁▃▆█``: each value's height between the smallest and largest (`` `` for a gap)."""
    have = [v for v in values if v is not None and math.isfinite(v)]
    if not have:
        return ""
    lo, hi = min(have), max(have)
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            level = 0 if hi == lo else round((v - lo) / (hi - lo) * (len(SPARKS) - 1))
            out.append(SPARKS[level])
    return "".join(out)


def format_compare(result: dict, top_classes: int = 15) -> str:
    """The terminal text of ``compare``."""
    labels = result["labels"]
    lines = []
    for label, r in zip(labels, result["runs"]):
        lines.append(f"{label}: {r['model']} on {r['data']}, {r['state']}  ({r['path']})")
    diff = result["settings"]
    lines.append("\nsettings that differ")
    if diff:
        rows = [[k, *[_setting(v) for v in vs]] for k, vs in diff.items()]
        lines.append(_indent(aligned(["setting", *labels], rows, right=set())))
    else:
        lines.append("  none: the runs were configured alike")
    lines.append("\nmetrics (* best)")
    rows = []
    for m in result["metrics"]:
        cells = [
            _show(v, m["show"]) + (" *" if i in m.get("best", []) else "")
            for i, v in enumerate(m["values"])
        ]
        rows.append([m["name"], *cells])
    lines.append(_indent(aligned(["", *labels], rows, right=set(range(1, len(labels) + 1)))))
    score = f"val {task_of(result['task']).score_title}"
    lines.append(f"\nlearning curves ({score} and train loss per epoch)")
    rows = []
    for label in labels:
        c = result["curves"][label]
        s = [v for v in c["val_score"] if v is not None]
        loss = [v for v in c["train_loss"] if v is not None]
        rows.append(
            [
                label,
                sparkline(c["val_score"]),
                f"{pct(s[0])} → {pct(s[-1])}" if s else "-",
                sparkline(c["train_loss"]),
                f"{loss[0]:.3f} → {loss[-1]:.3f}" if loss else "-",
            ]
        )
    lines.append(_indent(aligned(["", score, "", "train loss", ""], rows, right=set())))
    metric = "AP" if result["per_class_metric"] == "ap" else "F1"
    per_class = result["per_class"]
    lines.append(f"\nper-class {metric} on {result['split']} (largest differences first)")
    if per_class:
        rows = []
        for c, vs in list(per_class.items())[:top_classes]:
            have = [v for v in vs if v is not None]
            spread = max(have) - min(have) if len(have) > 1 else None
            rows.append(
                [
                    c,
                    *[pct(v, 1) if v is not None else "-" for v in vs],
                    pct(spread, 1) if spread is not None else "-",
                ]
            )
        lines.append(
            _indent(
                aligned(["class", *labels, "spread"], rows, right=set(range(1, len(labels) + 2)))
            )
        )
        if len(per_class) > top_classes:
            lines.append(
                f"  ... and {len(per_class) - top_classes} more classes (all in the "
                "HTML page and --json)"
            )
    for label, where in result["per_class_sources"].items():
        if not (where.startswith("evaluated") or where.endswith("metrics.json")):
            lines.append(f"  {label}: {where}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# --------------------------------------------------------------------------------- HTML
