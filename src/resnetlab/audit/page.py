"""The audit as one self-contained HTML page: each duplicate group and each likely wrong
label with the images' thumbnails (embedded PNGs), readable offline and in any language."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from ..analysis.report.html import CSS
from ..core.errors import ImageDecodeError
from ..core.files import atomic_write_text
from ..core.fmt import pct
from .core import AuditResult
from .duplicates import describe
from .scan import load_pixels, to_pil

THUMB = 96  # the longer side of a thumbnail on the page, in pixels
PAGE_LIMIT = 300  # groups and label issues shown (the JSON has them all)

PAGE_CSS = """
.group{border:1px solid #dde3ea;border-radius:8px;padding:.5rem .8rem;margin:.8rem 0}
.group h3{margin:.1rem 0 .4rem;font-size:1rem}.row{display:flex;flex-wrap:wrap;gap:.6rem}
figure{margin:0;width:140px;font-size:.78rem;word-break:break-all}
figure img{display:block;width:96px;height:96px;object-fit:contain;image-rendering:pixelated;
background:#f3f6f9}
figure.out img{outline:3px solid #c62828}.tag{display:inline-block;border-radius:4px;
padding:0 .35rem;margin-right:.3rem;font-size:.75rem;color:#fff;background:#5b6777}
.leak{background:#c62828}.conflict{background:#ef6c00}.within{background:#5b6777}
.exact{background:#1565c0}.near{background:#6a1b9a}.issue{display:flex;gap:.8rem;
border:1px solid #dde3ea;border-radius:8px;padding:.5rem;width:330px}
.issue img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;
background:#f3f6f9}.issues{display:flex;flex-wrap:wrap;gap:.6rem}.arrow{font-weight:bold}
"""


def thumbnail(result: AuditResult, index: int) -> str:
    """One image as a data: URL of a PNG at most THUMB pixels a side (small images enlarged
    without smoothing, so 8-pixel digits stay legible)."""
    items = result.items
    try:
        img = to_pil(load_pixels(result.source, str(items.split[index]), int(items.index[index])))
    except ImageDecodeError:
        img = Image.new("L", (THUMB, THUMB), 230)
    w, h = img.size
    scale = THUMB / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(result: AuditResult, index: int, caption: list[str], out: bool = False) -> str:
    e = html.escape
    lines = "<br>".join(e(c) for c in caption)
    alt = e(result.items.refs[index])
    cls = "out" if out else ""
    src = thumbnail(result, index)
    return (
        f'<figure class="{cls}"><img alt="{alt}" title="{alt}" src="{src}">'
        f"<figcaption>{lines}</figcaption></figure>"
    )


def _duplicates(result: AuditResult) -> str:
    e = html.escape
    groups = result.report["duplicates"]
    s = result.report["duplicate_summary"]
    if not groups:
        return "<section id=duplicates><h2>Duplicates</h2><p>None, exact or near.</p></section>"
    parts = [
        "<section id=duplicates><h2>Duplicates</h2><p class=muted>"
        f"{s['groups']} group(s) of {s['images']} images; a red frame marks the copies "
        "<code>--write-exclude</code> leaves out (one copy of each group is kept, none where "
        "the copies disagree on the label).</p>"
    ]
    for n, g in enumerate(groups[:PAGE_LIMIT], start=1):
        tags = f'<span class="tag {g["kind"]}">{g["kind"]}</span>'
        if g["leak"]:
            tags += '<span class="tag leak">leak</span>'
        if g["conflict"]:
            tags += '<span class="tag conflict">label conflict</span>'
        if not (g["leak"] or g["conflict"]):
            tags += '<span class="tag within">within</span>'
        sim = f" (similarity {g['similarity']:.4f})" if g["similarity"] else ""
        figures = "".join(
            _figure(
                result,
                k,
                [m["path"], f"{m['split']} · {m['label']}"],
                out=m["path"] in g["exclude"],
            )
            for k, m in zip(g["_index"], g["members"])
        )
        parts.append(
            f'<div class="group" id="group-{n}"><h3>#{n} {tags}{e(describe(g))}{e(sim)}'
            f'</h3><div class="row">{figures}</div></div>'
        )
    if len(groups) > PAGE_LIMIT:
        parts.append(
            f"<p class=muted>... and {len(groups) - PAGE_LIMIT} more groups (--json "
            "lists them all)</p>"
        )
    return "".join(parts) + "</section>"


def _labels(result: AuditResult) -> str:
    e = html.escape
    model = result.report.get("label_model")
    if model is None:
        return (
            "<section id=labels><h2>Label issues</h2><p class=muted>not looked for: run "
            "<code>resnetlab audit DATA --labels</code></p></section>"
        )
    issues = result.report["label_issues"]
    head = (
        f"<section id=labels><h2>Label issues</h2><p class=muted>{len(issues)} of "
        f"{model['images']:,} images are likely labelled wrong (confident learning, Northcutt "
        f"et al. 2021), from {e(model['description'])}: accuracy {pct(model['accuracy'], 1)}, "
        f"estimated label noise {pct(model['estimated_noise'], 1)}. Most likely first.</p>"
    )
    cards = []
    for r in issues[:PAGE_LIMIT]:
        alt = e(r["path"])
        cards.append(
            f'<div class="issue"><img alt="{alt}" title="{alt}" '
            f'src="{thumbnail(result, r["_index"])}"><div><b>{e(r["given"])}</b> '
            f"<span class=arrow>→</span> <b>{e(r['suggested'])}</b><br>"
            f"p = {r['probability']:.2f} (given: {r['given_probability']:.2f})<br>"
            f"<span class=muted>{e(r['split'])} · {alt}</span></div></div>"
        )
    more = (
        f"<p class=muted>... and {len(issues) - PAGE_LIMIT} more</p>"
        if len(issues) > PAGE_LIMIT
        else ""
    )
    return head + '<div class="issues">' + "".join(cards) + "</div>" + more + "</section>"


def write_page(result: AuditResult, path: str | Path) -> Path:
    """Write the audit page to ``path`` (a new file or one this command wrote before)."""
    e = html.escape
    r = result.report
    s = r["duplicate_summary"]
    issues = r.get("label_issues")
    cards = [
        ("images", f"{r['num_images']:,}"),
        ("duplicate groups", str(s["groups"])),
        ("leaks", str(s["leaks"])),
        ("label conflicts", str(s["conflicts"])),
        ("likely wrong labels", "-" if issues is None else str(len(issues))),
    ]
    splits = ", ".join(f"{k} {v:,}" for k, v in r["splits"].items())
    bad = "".join(f"<li>{e(b['path'])}: {e(b['reason'])}</li>" for b in r["unreadable"])
    body = (
        f"<h1>Data audit</h1><p class=muted>{e(r['data'])}: {splits}; classes: "
        f"{e(', '.join(r['classes']))}</p><div class=cards>"
        + "".join(f'<div class="card">{e(k)}<b>{e(v)}</b></div>' for k, v in cards)
        + "</div>"
        + (f"<section id=unreadable><h2>Unreadable</h2><ul>{bad}</ul></section>" if bad else "")
        + _duplicates(result)
        + _labels(result)
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Data audit: '
        f"{e(r['data'])}</title><style>{CSS}{PAGE_CSS}</style></head><body>{body}</body></html>"
    )
    path = Path(path)
    atomic_write_text(path, page)
    return path
