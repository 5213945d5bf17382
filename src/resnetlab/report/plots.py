"""Matplotlib figures shared by evaluate, report and the experiments (PNG, Agg backend)."""

from __future__ import annotations

import contextlib
import logging
import math
import re
from pathlib import Path

import numpy as np

# Fonts tried after DejaVu Sans for glyphs it lacks (CJK class names), when installed.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "Droid Sans Fallback",
             "Microsoft YaHei", "PingFang SC", "Arial Unicode MS")  # fmt: skip


CJK_FILES = re.compile(r"(notosanscjk|notoserifcjk|wqy|droidsansfallback|uming|ukai)", re.I)


def _plt():
    import matplotlib

    # Some CJK fonts come in one weight only (WenQuanYi Zen Hei: 500); matplotlib then logs
    # a warning per text item that it used that weight. Nothing is wrong: keep stderr clean.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed & set(CJK_FONTS):
        # Matplotlib's font cache predates fonts installed later: look for CJK ones once.
        for path in font_manager.findSystemFonts():
            if CJK_FILES.search(Path(path).name):
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    font_manager.fontManager.addfont(path)
        installed = {f.name for f in font_manager.fontManager.ttflist}
    plt.rcParams["font.family"] = ["DejaVu Sans", *(f for f in CJK_FONTS if f in installed)]
    return plt


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss, top-1 and learning rate against epoch."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]

    def col(key):
        return [r.get(key) if r.get(key) not in ("", None) else np.nan for r in history]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100)
    axes[0].plot(epochs, col("train_loss"), label="train", marker=".")
    axes[0].plot(epochs, col("val_loss"), label="val", marker=".")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [v * 100 for v in col("train_top1")], label="train", marker=".")
    axes[1].plot(epochs, [v * 100 for v in col("val_top1")], label="val", marker=".")
    axes[1].set_title("top-1 accuracy (%)")
    axes[2].plot(epochs, col("lr"), color="tab:green", marker=".")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> Path:
    """Row-normalised heat map (recall per true class), counts written in each cell."""
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
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color=color)  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_top_losses(images: list[np.ndarray], items: list[dict], path: Path) -> Path:
    """The most confidently wrong images, captioned true / predicted (probability)."""
    plt = _plt()
    n = max(1, len(images))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, it in zip(axes.flat, images, items):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(f"true {it['true']}\npred {it['pred']} ({it['prob']:.0%})", fontsize=9)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle("top losses: most confidently wrong")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
