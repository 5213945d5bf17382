"""Matplotlib figures shared by evaluate, report and the experiments (PNG, Agg backend).

Each ``plot_*`` writes its PNG where it always has and returns the ``matplotlib.figure.Figure``
it drew, so a notebook shows it (as a cell's value, or with ``display(fig)``) and a user can
restyle it and save it again. The figure is closed in pyplot once written: a long search or a
report keeps no figures open, and a notebook's inline backend does not draw it a second time
at the end of the cell (nor ``plt.show()`` later). The ``*_figure`` functions only draw."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import sys
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Fonts tried after DejaVu Sans for glyphs it lacks (CJK class names), when installed;
# Simplified Chinese first: most users with CJK class names label in Chinese.
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK JP",
    "Noto Sans CJK KR",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "Microsoft YaHei",
    "PingFang SC",
    "Arial Unicode MS",
)


CJK_FILES = re.compile(
    r"(notosanscjk|notoserifcjk|sourcehansans|wqy|droidsansfallback|uming|ukai)", re.I
)

CJK_HINT = (
    "class names in Chinese, Japanese or Korean are drawn as boxes: no CJK font is installed; "
    "install fonts-noto-cjk (Debian/Ubuntu: sudo apt-get install fonts-noto-cjk) or "
    "Noto Sans CJK (other systems)"
)

# Matplotlib's warning for each character no font in the family list has.
_MISSING_GLYPH = re.compile(r"^Glyph (\d+) .*missing from (font|current font)")
_hinted = False  # the CJK hint was given
_hinted_glyphs = False  # the hint for other characters (emoji, symbols) was given


@functools.cache
def cjk_fonts() -> tuple[str, ...]:
    """Installed CJK font families matplotlib can draw with, preferred first; () when none."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed & set(CJK_FONTS):
        # Matplotlib's font cache predates fonts installed later: look for CJK ones once.
        for path in font_manager.findSystemFonts():
            if CJK_FILES.search(Path(path).name):
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    font_manager.fontManager.addfont(path)
        installed = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(f for f in CJK_FONTS if f in installed)


def font_families() -> list[str]:
    """DejaVu Sans (matplotlib's default, so Latin text looks as always), then CJK fallbacks."""
    return ["DejaVu Sans", *cjk_fonts()]


def _plt():
    """pyplot on the Agg backend, with the CJK fallback fonts; every plot here starts with it."""
    import matplotlib

    # Some CJK fonts come in one weight only (WenQuanYi Zen Hei: 500); matplotlib then logs
    # a warning per text item that it used that weight. Nothing is wrong: keep stderr clean.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    if "ipykernel" not in sys.modules:
        # Files only, no display needed. In a Jupyter kernel the notebook's own backend
        # (inline) is kept, so the user's plots still show after one of ours.
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["font.family"] = font_families()
    return plt


@contextlib.contextmanager
def _glyph_check() -> Iterator[None]:
    """Turn matplotlib's warning per missing character into one hint per process: CJK
    characters without a CJK font name the font to install; others no font has (emoji,
    symbols) are named once. Other warnings pass through."""
    global _hinted, _hinted_glyphs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    cjk, other = False, set()
    for w in caught:
        m = _MISSING_GLYPH.match(str(w.message))
        if m is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        elif unicodedata.category(chr(int(m.group(1)))) == "Lo" and not cjk_fonts():
            cjk = True  # a letter of a script without a font: Chinese, Japanese, Korean
        else:
            other.add(chr(int(m.group(1))))
    if cjk and not _hinted:
        _hinted = True
        log.warning(CJK_HINT)
    if other and not _hinted_glyphs:
        _hinted_glyphs = True
        log.warning(
            "the plots draw %s as boxes: no installed font has %s (matplotlib draws no colour "
            "emoji); the tables, JSON and the report's text show the names as they are",
            " ".join(sorted(other)),
            "them" if len(other) > 1 else "it",
        )


def _columns(text: str) -> int:
    # Wide (CJK) characters take about two Latin letters' width.
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def wrap_label(text: str, width: int = 34) -> str:
    """Break *text* into lines of at most *width* columns: between words, or between any two
    wide characters (Chinese has no spaces); a longer Latin word is cut."""
    pieces: list[str] = []
    for token in re.findall(r"\s+|\S+", text):
        if token.isspace() or _columns(token) == len(token):
            pieces.extend([token[i : i + width] for i in range(0, len(token), width)])
        else:
            pieces.extend(token)  # wide characters may break anywhere
    lines, line = [], ""
    for p in pieces:
        if p.isspace():
            line += p if line else ""
        elif line.strip() and _columns(line + p) > width:
            lines.append(line.rstrip())
            line = p
        else:
            line += p
    lines.append(line.rstrip())
    return "\n".join(lines)


def _save(fig, path: Path):
    """``fig`` written to ``path`` and closed in pyplot; returns ``fig`` (still drawable)."""
    from .files import writing

    plt = _plt()
    try:
        with writing(path):  # a full disk or a read-only folder: one line naming the figure
            fig.savefig(path)
    finally:
        plt.close(fig)
    return fig


def curves_figure(
    history: list[dict],
    title: str = "",
    curves: list[tuple[str, str]] = (("val_top1", "val"),),
    panel: str = "top-1 accuracy (%)",
):
    """Loss, top-1 and learning rate against epoch (a matplotlib Figure). ``curves``: the
    validation columns drawn beside train top-1 (history key, legend), under the title
    ``panel``; a task's ``history_curves`` and ``history_panel``."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    epochs = [r["epoch"] for r in history]

    def col(key):
        return [r.get(key) if r.get(key) not in ("", None) else np.nan for r in history]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100, layout="constrained")
    axes[0].plot(epochs, col("train_loss"), label="train", marker=".")
    axes[0].plot(epochs, col("val_loss"), label="val", marker=".")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [v * 100 for v in col("train_top1")], label="train", marker=".")
    for key, legend in curves:
        axes[1].plot(epochs, [v * 100 for v in col(key)], label=legend, marker=".")
    axes[1].set_title(panel)
    axes[2].plot(epochs, col("lr"), color="tab:green", marker=".")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        # Epochs are whole: no tick at 1.2, 1.4 … on short runs.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(history: list[dict], path: Path, title: str = "", **task):
    """Loss, top-1 and learning rate against epoch, saved as PNG; returns the Figure
    (``task``: ``curves`` and ``panel`` as :func:`curves_figure`)."""
    with _glyph_check():
        return _save(curves_figure(history, title, **task), path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path):
    """Row-normalised heat map (recall per true class), counts written in each cell, saved as
    PNG; returns the Figure."""
    with _glyph_check():
        plt = _plt()
        n = len(classes)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        side = min(16, max(4, 0.5 * n + 2))
        fig, ax = plt.subplots(figsize=(side + 1, side), dpi=100)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
        if n <= 40:
            ax.set_xticks(range(n), labels=classes, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(n), labels=classes, fontsize=8)
        if n <= 25:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        color = "white" if norm[i, j] > 0.5 else "black"
                        ax.text(
                            j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color
                        )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion matrix")
        fig.tight_layout()
        return _save(fig, path)


def gallery_figure(
    images: list[np.ndarray], captions: list[str], title: str, empty: str = "no images"
):
    """Images in rows of up to four, each under its caption (a matplotlib Figure)."""
    plt = _plt()
    n = max(1, len(images))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    # Constrained layout leaves each row room for its captions, which may wrap to several
    # lines; tight_layout let them run into the images above.
    fig, axes = plt.subplots(
        rows, cols, figsize=(3 * cols, 3.6 * rows), dpi=100, squeeze=False, layout="constrained"
    )
    fig.get_layout_engine().set(w_pad=0.08, h_pad=0.1)  # inches between panels
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, captions):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(caption, fontsize=9)
    if not images:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center")
    fig.suptitle(title)
    return fig


def top_losses_figure(images: list[np.ndarray], items: list[dict]):
    """The most confidently wrong images, captioned true / predicted (a matplotlib Figure)."""
    # Multi-label items say their predicted labels with each one's probability.
    captions = [
        wrap_label("true " + str(it["true"]))
        + "\n"
        + wrap_label(it.get("pred_text") or f"pred {it['pred']} ({it['prob']:.0%})")
        for it in items
    ]
    title, empty = "top losses: most confidently wrong", "no misclassified images"
    return gallery_figure(images, captions, title, empty)


def pr_curves_figure(probs: np.ndarray, targets: np.ndarray, classes: list[str], ap: dict):
    """Multi-label: each class's precision-recall curve, its AP in the legend (a Figure)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.8), dpi=100, layout="constrained")
    for j, name in enumerate(classes[:20]):  # more curves than this are unreadable
        t = targets[:, j] > 0.5
        if not t.any():
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        tp = np.cumsum(t[order])
        precision = tp / np.arange(1, len(order) + 1)
        recall = tp / t.sum()
        value = ap.get(name)
        label = f"{name} (AP {value:.0%})" if value is not None else name
        ax.step(np.r_[0, recall], np.r_[precision[0], precision], where="post", label=label)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall per class")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_pr_curves(probs, targets, classes: list[str], ap: dict, path: Path):
    """Multi-label: the precision-recall curve of each class, saved as PNG; returns the
    Figure."""
    with _glyph_check():
        return _save(pr_curves_figure(np.asarray(probs), np.asarray(targets), classes, ap), path)


def plot_top_losses(images: list[np.ndarray], items: list[dict], path: Path):
    """The most confidently wrong images, captioned true / predicted (probability), as PNG;
    returns the Figure."""
    with _glyph_check():
        return _save(top_losses_figure(images, items), path)


def plot_lr_find(lrs, losses, suggestion: float, path: Path, title: str):
    """The LR range test: smoothed loss against a log learning-rate axis, the suggestion;
    saved as PNG, returns the Figure."""
    plt = _plt()

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(lrs, losses, color="tab:blue")
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"LR range test: {title}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def plot_tune_history(trials: list[tuple[int, float, bool]], path: Path):
    """A search's history: ``(trial number, val top-1, finished)`` per trial (unfinished ones,
    i.e. pruned, in grey), and the best so far; saved as PNG, returns the Figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    xs, ys, best, running = [], [], [], float("-inf")
    for number, value, complete in trials:
        xs.append(number)
        ys.append(value * 100)
        if complete:
            running = max(running, value * 100)
        best.append(running if running > float("-inf") else None)
    colors = ["tab:blue" if complete else "tab:gray" for _, _, complete in trials]
    ax.scatter(xs, ys, c=colors, label="trial (grey: pruned)")
    ax.step(
        xs,
        [b if b is not None else float("nan") for b in best],
        where="post",
        color="tab:red",
        label="best so far",
    )
    ax.set_xlabel("trial")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def plot_degradation(runs: list[dict], path: Path, data: str):
    """He et al.'s Figure 1/6: training and held-out error of plain (dashed) and residual
    (solid) nets per depth, against iterations; several seeds are averaged. Saved as PNG,
    returns the Figure."""
    import statistics

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110)
    depths = sorted({r["depth"] for r in runs})
    colors = dict(zip(depths, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for kind, style in (("plain", "--"), ("residual", "-")):
        for depth in depths:
            group = [r for r in runs if r["kind"] == kind and r["depth"] == depth]
            if not group:
                continue
            n = len(group[0]["train_error"])
            iters = [(i + 1) * group[0]["steps_per_epoch"] for i in range(n)]
            label = f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}"
            for ax, key in ((axes[0], "train_error"), (axes[1], "val_error")):
                ys = [statistics.fmean(r[key][i] for r in group) * 100 for i in range(n)]
                ax.plot(iters, ys, style, color=colors[depth], label=label, linewidth=1.8)
    for ax, title in ((axes[0], "training error"), (axes[1], "held-out (val) error")):
        ax.set_xlabel("iterations")
        ax.set_ylabel("error (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"plain (dashed) vs residual (solid) on {data}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def heatmap_overlay(
    image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "turbo"
) -> np.ndarray:
    """An (H, W, 3) uint8 image with the (H, W) heat in [0, 1] coloured by ``cmap`` and
    blended over it: ``(1 - alpha) * image + alpha * colour`` (uint8 (H, W, 3))."""
    from matplotlib import colormaps  # the colormap registry only: no pyplot, no backend

    from .errors import ConfigError

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    colour = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def reliability_figure(diagrams: list[tuple[str, dict]]):
    """Reliability diagrams side by side (Guo et al. 2017, fig. 1), one per ``(title, bins)``.

    ``bins`` is ``calibrate.ReliabilityBins.to_json()``: ``edges`` (bins + 1), ``accuracy``,
    ``confidence`` (None for an empty bin), ``counts`` and optionally ``ece``. Bars show each
    bin's accuracy; the red part is the gap to its mean confidence; the diagonal is perfect
    calibration. Below, how many predictions fall in each bin."""
    plt = _plt()
    n = max(1, len(diagrams))
    fig, axes = plt.subplots(
        2,
        n,
        figsize=(4.2 * n, 5.2),
        dpi=100,
        squeeze=False,
        height_ratios=[3, 1],
        sharex=True,
        layout="constrained",
    )
    for col, (title, bins) in enumerate(diagrams):
        top, bottom = axes[0, col], axes[1, col]
        edges = np.asarray(bins["edges"], dtype=float)
        left, width = edges[:-1], np.diff(edges)
        acc = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=float)
        conf = np.array([np.nan if c is None else c for c in bins["confidence"]], dtype=float)
        filled = ~np.isnan(acc)
        top.bar(
            left[filled],
            acc[filled],
            width[filled],
            align="edge",
            color="tab:blue",
            edgecolor="black",
            linewidth=0.6,
            label="accuracy",
        )
        gap = conf[filled] - acc[filled]
        top.bar(
            left[filled],
            gap,
            width[filled],
            bottom=acc[filled],
            align="edge",
            color="tab:red",
            alpha=0.35,
            edgecolor="tab:red",
            linewidth=0.6,
            label="gap to confidence",
        )
        top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfectly calibrated")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        ece = bins.get("ece")
        top.set_title(wrap_label(title + (f"   ECE {ece:.1%}" if ece is not None else ""), 40))
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(left, bins["counts"], width, align="edge", color="tab:gray")
        bottom.set_xlabel("confidence (top-1 probability)")
        bottom.set_ylabel("predictions")
        bottom.grid(alpha=0.3)
    return fig


def plot_reliability(diagrams: list[tuple[str, dict]], path: Path):
    """Reliability diagrams (e.g. before and after temperature scaling) saved as PNG;
    returns the Figure."""
    with _glyph_check():
        return _save(reliability_figure(diagrams), path)
