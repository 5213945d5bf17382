"""Runs side by side as one HTML page: the curves as inline SVG charts, the metrics table with
the best marked, per-class tables and the settings that differ."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from ...core.files import atomic_write_text
from ...core.fmt import pct, shell_command
from ...tasks import task_of
from .compare import PALETTE, _best, _setting, _show
from .html import CSS
from .runs import calibration_text


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 0.5:
        ticks.append(round(t, 12))
        t += step
    return ticks


def svg_chart(
    series: list[dict],
    title: str,
    percent: bool = False,
    log: bool = False,
    width: int = 520,
    height: int = 280,
) -> str:
    """One chart as inline SVG: ``series`` of ``{"label", "color", "x", "y", "dash"}``
    overlaid, with axes, ticks and a tooltip on every point."""
    e = html.escape
    points = [
        (x, y)
        for s in series
        for x, y in zip(s["x"], s["y"])
        if y is not None and math.isfinite(y) and (not log or y > 0)
    ]
    left, right, top, bottom = 56, 12, 26, 34
    w, h = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{e(title)}</text>',
    ]

    if not points:
        out.append(f'<text x="{left}" y="{top + h / 2}" fill="#5b6777">no values</text></svg>')
        return "".join(out)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 0.5, x1 + 0.5
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    y0, y1 = f(min(ys)), f(max(ys))
    if percent:
        y0, y1 = max(0.0, y0 - 0.05), min(1.0, y1 + 0.05)
    pad = (y1 - y0) * 0.08 or 0.5
    y0, y1 = (y0 - pad, y1 + pad) if not percent else (y0, y1)
    if y1 <= y0:
        y1 = y0 + 1e-3

    def px(x):
        return left + (x - x0) / (x1 - x0) * w

    def py(y):
        return top + h - (f(y) - y0) / (y1 - y0) * h

    # axes, grid and ticks
    out.append(
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#dde3ea"/>'
    )
    ticks = _nice_ticks(y0, y1)
    for t in ticks:
        if not y0 - 1e-9 <= t <= y1 + 1e-9:
            continue
        y = top + h - (t - y0) / (y1 - y0) * h
        label = f"{t:.0%}" if percent else (f"{10**t:.2g}" if log else f"{t:.3g}")
        out.append(
            f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#eef1f4"/><text x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
            f'text-anchor="end" fill="#5b6777">{label}</text>'
        )
    epochs = sorted({int(x) for x in xs})
    step = max(1, math.ceil(len(epochs) / 10))
    for x in epochs[::step]:
        out.append(
            f'<text x="{px(x):.1f}" y="{top + h + 16}" font-size="11" '
            f'text-anchor="middle" fill="#5b6777">{x}</text>'
        )
    out.append(
        f'<text x="{left + w / 2}" y="{height - 4}" font-size="11" text-anchor="middle" '
        'fill="#5b6777">epoch</text>'
    )
    for s in series:
        pts = [
            (x, y)
            for x, y in zip(s["x"], s["y"])
            if y is not None and math.isfinite(y) and (not log or y > 0)
        ]
        if not pts:
            continue
        dash = ' stroke-dasharray="5 4"' if s.get("dash") else ""
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{s["color"]}" stroke-width="2"{dash}/>'
        )
        for x, y in pts:
            shown = f"{y:.2%}" if percent else f"{y:.4g}"
            out.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{s["color"]}">'
                f"<title>{e(s['label'])}, epoch {x}: {shown}</title></circle>"
            )
    out.append("</svg>")
    return "".join(out)


def compare_html(result: dict) -> str:
    """The self-contained page: every style and chart inline, no script, no link out."""
    e = html.escape
    labels = result["labels"]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(labels))]
    chip = [
        f'<span class="chip" style="background:{c}"></span>{e(n)}' for n, c in zip(labels, colors)
    ]
    head = "".join(f"<th>{c}</th>" for c in chip)
    runs = "".join(
        f"<tr><td>{chip[i]}</td><td>{e(str(r['model']))}</td><td>{e(str(r['data']))}</td>"
        f"<td>{e(r['state'])}</td><td>{e(calibration_text(r))}</td>"
        f"<td>{e((r['date'] or '-')[:16].replace('T', ' '))}</td>"
        f"<td class=path>{e(r['path'])}</td></tr>"
        for i, r in enumerate(result["runs"])
    )
    sections = [
        f"<h1>Comparing {len(labels)} runs</h1><p class=muted>generated "
        f"{datetime.now().isoformat(timespec='seconds')} by resnetlab compare</p>",
        '<section id="runs"><h2>Runs</h2><table class=text><tr><th>run</th><th>model</th>'
        "<th>data</th>"
        f"<th>state</th><th>calibration</th><th>date</th><th>folder</th></tr>{runs}</table>"
        "</section>",
    ]
    if result["settings"]:
        rows = "".join(
            f"<tr><td>{e(k)}</td>" + "".join(f"<td>{e(_setting(v))}</td>" for v in vs) + "</tr>"
            for k, vs in result["settings"].items()
        )
        body = f"<table><tr><th>setting</th>{head}</tr>{rows}</table>"
    else:
        body = "<p>None: the runs were configured alike.</p>"
    sections.append(f'<section id="settings"><h2>Settings that differ</h2>{body}</section>')
    rows = ""
    for m in result["metrics"]:
        cells = "".join(
            f"<td class=best>{e(_show(v, m['show']))}</td>"
            if i in m.get("best", [])
            else f"<td>{e(_show(v, m['show']))}</td>"
            for i, v in enumerate(m["values"])
        )
        rows += f"<tr><td>{e(m['name'])}</td>{cells}</tr>"
    sections.append(
        f'<section id="metrics"><h2>Metrics</h2><p class=muted>The best of each row '
        f"is shaded.</p><table><tr><th></th>{head}</tr>{rows}</table></section>"
    )
    curves = result["curves"]
    score = f"val {task_of(result['task']).score_title}"

    def series(key: str, dash: bool = False, suffix: str = "") -> list[dict]:
        return [
            {
                "label": n + suffix,
                "color": c,
                "x": curves[n]["epoch"],
                "y": curves[n][key],
                "dash": dash,
            }
            for n, c in zip(labels, colors)
        ]

    charts = [
        svg_chart(series("val_score"), score, percent=True),
        svg_chart(
            series("val_loss", suffix=" val") + series("train_loss", True, " train"),
            "loss (solid: val, dashed: train)",
        ),
        svg_chart(series("lr"), "learning rate"),
    ]
    legend = " ".join(f'<span class="legend">{c}</span>' for c in chip)
    sections.append(
        f'<section id="curves"><h2>Learning curves</h2><p>{legend}</p>'
        f'<div class="charts">{"".join(charts)}</div></section>'
    )
    metric = "AP" if result["per_class_metric"] == "ap" else "F1"
    per_class = result["per_class"]
    if per_class:
        rows = ""
        for c, vs in per_class.items():
            have = [v for v in vs if v is not None]
            spread = max(have) - min(have) if len(have) > 1 else None
            best = _best(vs, "max")
            cells = "".join(
                (f"<td class=best>{pct(v, 1)}</td>" if i in best else f"<td>{pct(v, 1)}</td>")
                if v is not None
                else "<td>-</td>"
                for i, v in enumerate(vs)
            )
            bar = (
                f'<span class="bar" style="width:{spread * 100:.0f}px"></span>{pct(spread, 1)}'
                if spread is not None
                else "-"
            )
            rows += f"<tr><td>{e(c)}</td>{cells}<td class=spread>{bar}</td></tr>"
        body = f"<table><tr><th>class</th>{head}<th>spread</th></tr>{rows}</table>"
    else:
        body = "<p>No per-class numbers: none of the runs could be evaluated.</p>"
    notes = "".join(f"<li>{e(n)}: {e(w)}</li>" for n, w in result["per_class_sources"].items())
    sections.append(
        f'<section id="per-class"><h2>Per-class {metric} on {e(result["split"])}'
        "</h2><p class=muted>Largest differences between the runs first.</p>"
        f"{body}<ul class=muted>{notes}</ul></section>"
    )
    configs = "".join(
        f"<details><summary>{chip[i]}</summary><pre>{e(_yaml(cfg))}</pre></details>"
        for i, cfg in enumerate(result["configs"])
    )
    sections.append(f'<section id="configs"><h2>Full settings</h2>{configs}</section>')
    css = CSS + (
        ".chip{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;"
        "vertical-align:-.05em}.best{background:#e3f4e1;font-weight:600}.charts{display:flex;"
        "flex-wrap:wrap;gap:1rem}.charts svg{border:1px solid #eef1f4;background:#fff;"
        "font-family:inherit}.legend{margin-right:1rem;white-space:nowrap}.bar{display:"
        "inline-block;height:.7em;background:#f0a35e;margin-right:.4em}td.spread{text-align:"
        "left}table.text td,table.text th{text-align:left}.path{font-size:.8rem;"
        "color:#5b6777}details{margin:.3rem 0}"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>resnetlab compare: {e(', '.join(labels))}</title><style>{css}</style></head>"
        "<body>" + "\n".join(sections) + "</body></html>\n"
    )


def _yaml(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


def write_compare_html(result: dict, path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "compare.html"
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, compare_html(result))
    return p


def html_hint(runs: Sequence[str]) -> str:
    return shell_command("resnetlab", "compare", *runs, "--html", "compare.html")
