"""How results show in a notebook: figures and thumbnails as inline PNGs, small HTML tables."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# Rows of a prediction shown in a notebook (the object holds them all).
HTML_ROWS = 50
THUMB = 64  # side of a thumbnail in the notebook display


def _png(fig) -> str:
    """A matplotlib figure as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _detached(fig):
    """``fig`` let go by pyplot and returned: it shows once, as a cell's value or with
    ``display(fig)``, never again at the end of the cell or at a later ``plt.show()``, and
    figures made in a loop do not pile up (matplotlib's warning at 20)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _thumbnail(t: torch.Tensor) -> np.ndarray:
    """What the model saw, small: uint8 (H, W) or (H, W, 3)."""
    from PIL import Image

    a = t.float().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else np.ascontiguousarray(a))
    if max(img.size) > THUMB:
        img.thumbnail((THUMB, THUMB))
    elif max(img.size) < THUMB // 2:  # digits: 8x8 shown bigger, pixels kept
        scale = THUMB // max(img.size)
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return np.asarray(img)


def _png_of(a: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
