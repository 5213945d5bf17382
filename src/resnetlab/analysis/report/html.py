"""``resnetlab report RUN``: one HTML file, plots embedded, readable offline."""

from __future__ import annotations

import base64
import html
import json
import platform
from datetime import datetime
from pathlib import Path

import torch

from ...artifacts.run import RunDir, output_folder
from ...core.errors import MissingFileError
from ...core.files import atomic_write_text
from ...core.fmt import pct
from ...core.plots import plot_curves, plot_reliability
from ...tasks import task_of

# Class names may be Chinese, Japanese or Korean: after the usual UI fonts come CJK ones
# (Simplified Chinese first), so the page never falls back to boxes or to a Japanese face
# where a CJK font is installed (Debian: fonts-noto-cjk; Windows: YaHei; macOS: PingFang).
FONTS = (
    'system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans","Noto Sans CJK SC",'
    '"Source Han Sans SC","Noto Sans CJK TC","Noto Sans CJK JP","Noto Sans CJK KR",'
    '"PingFang SC","Microsoft YaHei","WenQuanYi Zen Hei",sans-serif'
)
MONO_FONTS = (
    'ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,"Noto Sans Mono CJK SC","Noto Sans CJK SC",'
    '"Microsoft YaHei",monospace'
)
CSS = f"""
body{{font-family:{FONTS};margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1d2430;line-height:1.45}}
h1{{margin-bottom:.2rem}}h2{{border-bottom:1px solid #dde3ea;padding-bottom:.3rem;margin-top:2rem}}
.muted{{color:#5b6777}}table{{border-collapse:collapse;margin:.5rem 0}}
td,th{{border:1px solid #dde3ea;padding:.25rem .6rem;text-align:right}}
th{{background:#f3f6f9}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%;border:1px solid #eef1f4}}pre{{background:#f6f8fa;padding:.8rem;
overflow:auto;font-size:.85rem;font-family:{MONO_FONTS}}}.cards{{display:flex;gap:1rem;flex-wrap:wrap}}
.card{{border:1px solid #dde3ea;border-radius:8px;padding:.6rem 1rem;min-width:150px}}
.card b{{display:block;font-size:1.4rem}}
"""


def _gradcam_gallery(ev: dict) -> str:
    """The same most-confidently-wrong images under the heat of the class the model chose."""
    if "top_losses_gradcam_png" in ev["files"]:
        return (
            "<h3>Where the model looked</h3><p class=muted>Grad-CAM heat of the wrongly "
            "predicted class (red: strongest evidence).</p>"
            + _img(Path(ev["files"]["top_losses_gradcam_png"]), "Grad-CAM of the top losses")
        )
    note = ev.get("gradcam_note")
    return f"<p class=muted>{html.escape(note)}</p>" if note else ""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pct(v: float | None) -> str:
    # One format for every accuracy on the page, cards and tables alike.
    return pct(v, 1)


def _calibration_section(rd: RunDir, figures: Path, ev: dict) -> str:
    """Reliability diagrams before and after temperature scaling, from RUN/calibration.json
    (written at the end of training), and the ECE cards; a line saying why when absent."""
    e = html.escape
    if not rd.calibration.is_file():
        return (
            '<section id="calibration"><h2>Calibration</h2><p class=muted>not calibrated: '
            "no calibration.json (the run had no validation split to fit a temperature on, "
            "or predates calibration)</p></section>"
        )
    cal = json.loads(rd.calibration.read_text(encoding="utf-8"))
    t = float(cal["temperature"])
    png = figures / "reliability.png"
    plot_reliability(
        [
            ("before calibration", cal["reliability_before"]),
            (f"after (T = {t:.3g})", cal["reliability_after"]),
        ],
        png,
    )
    cards = [
        ("temperature", f"{t:.3g}"),
        (f"ECE before ({cal.get('split', 'val')})", _pct(cal["ece_before"])),
        (f"ECE after ({cal.get('split', 'val')})", _pct(cal["ece_after"])),
    ]
    if ev.get("ece") is not None:
        cards.append((f"ECE on {ev['split']}", _pct(ev["ece"])))
    return (
        '<section id="calibration"><h2>Calibration</h2><div class="cards">'
        + "".join(f'<div class="card">{e(k)}<b>{e(v)}</b></div>' for k, v in cards)
        + "</div><p class=muted>Probabilities are softmax(logits / T), T fitted on the "
        f"{e(str(cal.get('split', 'val')))} split ({cal.get('num_samples', '?')} images); the "
        "bars show each confidence bin's accuracy, the diagonal is perfect calibration.</p>"
        + _img(png, "reliability diagram")
        + "</section>"
    )


def _thresholds_section(rd: RunDir) -> str:
    """Multi-label: the per-class thresholds chosen on the validation split."""
    e = html.escape
    if not rd.calibration.is_file():
        return (
            '<section id="thresholds"><h2>Thresholds</h2><p class=muted>every label at 0.5: '
            "the run had no validation split to choose thresholds on</p></section>"
        )
    cal = json.loads(rd.calibration.read_text(encoding="utf-8"))
    rows = "".join(
        f"<tr><td>{e(name)}</td><td>{float(t):.3f}</td></tr>"
        for name, t in cal["thresholds"].items()
    )
    return (
        '<section id="thresholds"><h2>Thresholds</h2><p class=muted>A label is predicted when '
        "its sigmoid probability reaches its threshold, chosen where the label's F1 is highest "
        f"on the {e(str(cal.get('split', 'val')))} split ({cal.get('num_samples', '?')} images: "
        f"mAP {_pct(cal.get('map'))}, macro-F1 {_pct(cal.get('f1_macro'))} there).</p>"
        f"<table><tr><th>label</th><th>threshold</th></tr>{rows}</table></section>"
    )


def build_report(
    run: str | Path, data: str | None = None, top_losses: int = 12, out: str | Path | None = None
) -> Path:
    """Evaluate the run's best model and write ``RUN/report.html`` (its figures in
    ``RUN/report-files/``); with ``out``, ``OUT/report.html`` and ``OUT/report-files/``, as for a
    run folder that cannot be written."""
    from ...inference.loading import load_model
    from ...models.summary import format_summary, summarize
    from ..evaluate import evaluate_run

    rd = RunDir(run)
    if not rd.meta.is_file():
        raise MissingFileError(f"{run}: not a run folder (no {rd.META}); give a run folder")
    summary, config, history = rd.read_summary(), rd.config_text(), rd.read_metrics()
    home = RunDir(output_folder(out, rd.path, "the report"))
    figures = home.report_files
    figures.mkdir(exist_ok=True)
    loaded = load_model(run)
    meta = loaded.meta
    # Summarised before evaluation moves the model to the evaluation device.
    model_text = format_summary(
        meta.model, summarize(loaded.model, tuple(meta.input_size), depth=1)
    )
    ev = evaluate_run(loaded, data=data, top_losses=top_losses, out_dir=figures)
    task = task_of(meta)
    curves = figures / "curves.png" if history else None
    if curves:
        plot_curves(history, curves, meta.model, **task.curves_options())

    e = html.escape
    parts = _PARTS[task.name](meta, ev, summary, history, rd, figures)
    per_class_head = parts["per_class_head"]
    per_class_rows = "".join(
        parts["per_class_row"](e(name), m) for name, m in ev["per_class"].items()
    )
    history_cols = parts["history_cols"]

    def cell(r: dict, k: str) -> str:
        v = r.get(k)
        if v is None:
            return ""
        if k == "epoch":
            return str(int(v))
        return _pct(v) if k.endswith(("top1", "map", "match")) else f"{v:.4g}"

    history_rows = "".join(
        "<tr>" + "".join(f"<td>{cell(r, k)}</td>" for k in history_cols) + "</tr>" for r in history
    )
    env = {
        "generated": datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "precision": summary.get("precision", "-"),
        "device": summary.get("device", "-"),
        "train images/s": summary.get("train_images_per_second", "-"),
    }
    sections = [
        f"<h1>{e(rd.name)}</h1>"
        f"<p class=muted>{e(meta.model)} on {e(str(ev['data']))} · {ev['num_samples']} "
        f"{e(ev['split'])} images evaluated</p>",
        '<section id="overview"><h2>Overview</h2><div class="cards">'
        + "".join(f'<div class="card">{e(k)}<b>{e(v)}</b></div>' for k, v in parts["cards"])
        + "</div></section>",
        '<section id="curves"><h2>Learning curves</h2>'
        + (_img(curves, "learning curves") if curves else "<p>no metrics.csv</p>")
        + f"<table><tr>{parts['history_head']}</tr>{history_rows}</table>"
        "</section>",
        parts["figure"],
        f'<section id="per-class"><h2>Per-class metrics</h2><table><tr>{per_class_head}</tr>'
        + per_class_rows
        + "</table></section>",
        '<section id="top-losses"><h2>Top losses</h2>'
        + (
            _img(Path(ev["files"]["top_losses_png"]), "top losses")
            if "top_losses_png" in ev["files"]
            else "<p>none</p>"
        )
        + _gradcam_gallery(ev)
        + "</section>",
        parts["calibration"],
        f'<section id="model"><h2>Model</h2><pre>{e(model_text)}</pre></section>',
        f'<section id="config"><h2>Configuration</h2><pre>{e(config)}</pre></section>',
        '<section id="environment"><h2>Environment</h2><table>'
        + "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in env.items())
        + "</table></section>",
    ]
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>resnetlab report: {e(rd.name)}</title><style>{CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    atomic_write_text(home.report, page)
    _attach_to_tracker(rd, home.report)
    return home.report


def _attach_to_tracker(rd: RunDir, page: Path) -> None:
    """The page joins the run's experiment-tracker run (``train --tracker``), if it has one;
    a tracker that cannot be reached now is a warning, never a lost report."""
    import logging

    from ...train.trackers import attach_files

    if not rd.tracker.is_file():
        return
    try:
        attach_files(rd, [(page, "report")])
    except Exception as exc:  # noqa: BLE001  the tracker's own errors: no server, no package
        logging.getLogger(__name__).warning(
            "report not added to the run's tracker (%s): %s", rd.tracker.name, exc
        )


def _single_label_parts(meta, ev, summary, history, rd, figures) -> dict:
    """The report's task-dependent pieces for a single-label model."""
    return {
        "cards": [
            ("model", meta.model),
            (f"{ev['split']} top-1", _pct(ev["top1"])),
            (f"{ev['split']} top-5", _pct(ev["top5"])),
            ("balanced accuracy", _pct(ev.get("balanced_accuracy"))),
            ("macro-F1", _pct(ev.get("f1_macro"))),
            ("best val top-1", _pct(summary.get("best_val_top1"))),
            ("epochs", str(summary.get("epochs_completed", len(history)))),
            ("classes", str(len(meta.classes))),
        ],
        "per_class_head": (
            "<th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>"
        ),
        "per_class_row": lambda name, m: (
            f"<tr><td>{name}</td><td>{_pct(m['precision'])}</td><td>{_pct(m['recall'])}</td>"
            f"<td>{_pct(m['f1'])}</td><td>{m['support']}</td></tr>"
        ),
        "history_cols": (
            "epoch",
            "lr",
            "train_loss",
            "train_top1",
            "val_loss",
            "val_top1",
            "seconds",
        ),
        "history_head": (
            "<th>epoch</th><th>lr</th><th>train loss</th><th>train top-1</th><th>val loss</th>"
            "<th>val top-1</th><th>seconds</th>"
        ),
        "figure": '<section id="confusion"><h2>Confusion matrix</h2>'
        + _img(Path(ev["files"]["confusion_matrix_png"]), "confusion matrix")
        + "</section>",
        "calibration": _calibration_section(rd, figures, ev),
    }


def _multi_label_parts(meta, ev, summary, history, rd, figures) -> dict:
    """The report's task-dependent pieces for a multi-label model: mAP and F1 cards, AP and
    thresholds per label, PR curves, and train_top1 read as the exact-match ratio (val mAP
    picks the best epoch)."""
    return {
        "cards": [
            ("model", meta.model),
            (f"{ev['split']} mAP", _pct(ev["map"])),
            ("chance mAP", _pct(ev.get("chance_map"))),
            ("F1 micro", _pct(ev["f1_micro"])),
            ("F1 macro", _pct(ev["f1_macro"])),
            ("exact match", _pct(ev["exact_match"])),
            ("best val mAP", _pct(summary.get("best_val_map"))),
            ("epochs", str(summary.get("epochs_completed", len(history)))),
            ("labels", str(len(meta.classes))),
        ],
        "per_class_head": (
            "<th>label</th><th>AP</th><th>precision</th><th>recall</th><th>F1</th>"
            "<th>threshold</th><th>support</th>"
        ),
        "per_class_row": lambda name, m: (
            f"<tr><td>{name}</td><td>{_pct(m['ap'])}</td><td>{_pct(m['precision'])}</td>"
            f"<td>{_pct(m['recall'])}</td><td>{_pct(m['f1'])}</td>"
            f"<td>{m['threshold']:.2f}</td><td>{m['support']}</td></tr>"
        ),
        "history_cols": (
            "epoch",
            "lr",
            "train_loss",
            "train_top1",
            "val_loss",
            "val_exact_match",
            "val_map",
            "seconds",
        ),
        "history_head": (
            "<th>epoch</th><th>lr</th><th>train loss</th><th>train exact match</th>"
            "<th>val loss</th><th>val exact match</th><th>val mAP</th><th>seconds</th>"
        ),
        "figure": '<section id="pr-curves"><h2>Precision-recall curves</h2>'
        + _img(Path(ev["files"]["pr_curves_png"]), "precision-recall curves")
        + "</section>",
        "calibration": _thresholds_section(rd),
    }


_PARTS = {"multiclass": _single_label_parts, "multilabel": _multi_label_parts}
