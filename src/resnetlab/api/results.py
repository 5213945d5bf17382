"""What a run's methods return: predictions, an evaluation and explanations, each printable
and shown as a table in a notebook."""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..core.optional import require
from ..tasks import task_of
from .display import HTML_ROWS, _detached, _pct, _png, _png_of, _table


class Predictions(Sequence):
    """What :meth:`Run.predict` returns: one row per image, in input order.

    Attributes:
        names: each input's name (its path; ``<image 3>`` for an image held in memory).
        probs: ``(N, C)`` float32 array of probabilities in class order (calibrated when the
            run is; multi-label: each label's sigmoid); rows of unreadable inputs are NaN.
        errors: per input, None or why it could not be read.
        classes: the class names (columns of ``probs``).
    """

    def __init__(
        self,
        names: list[str],
        probs: np.ndarray,
        errors: list[str | None],
        classes: list[str],
        thresholds: list[float] | None = None,
        thumbnails: list[np.ndarray | None] | None = None,
        k: int | None = None,
    ) -> None:
        self.names, self.probs, self.errors = names, probs, errors
        self.classes, self.thresholds = list(classes), thresholds
        self._thumbs = thumbnails or [None] * len(names)
        self.k = k

    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    @property
    def labels(self) -> list:
        """The predicted class of each input (None for an error); multi-label: the list of
        labels at or above their thresholds."""
        task = task_of(self.multilabel)
        return [
            None if err is not None else task.decide(row, self.classes, self.thresholds)
            for row, err in zip(self.probs, self.errors)
        ]

    @property
    def indices(self) -> np.ndarray:
        """The index of the most probable class of each input (-1 for an error)."""
        best = np.argmax(np.nan_to_num(self.probs, nan=-1.0), axis=1)
        return np.where([e is None for e in self.errors], best, -1)

    def topk(self, k: int | None = None) -> list[list[dict[str, Any]]]:
        """The ``k`` (default 5) most probable classes of each input, most probable first:
        ``[{"label", "index", "prob"}, ...]``; an empty list for an input with an error."""
        from ..inference.predict import check_topk

        k = min(check_topk(k) or self.k or 5, len(self.classes))
        rows = []
        for row, err in zip(self.probs, self.errors):
            if err is not None:
                rows.append([])
                continue
            order = np.argsort(-row, kind="stable")[:k]
            rows.append(
                [{"label": self.classes[i], "index": int(i), "prob": float(row[i])} for i in order]
            )
        return rows

    def rows(self, k: int | None = None) -> list[dict[str, Any]]:
        """One mapping per input as ``resnetlab predict --json`` prints it:
        ``{"path", "topk", "error"}``."""
        return [
            {"path": n, "topk": t, "error": e}
            for n, t, e in zip(self.names, self.topk(k), self.errors)
        ]

    def to_pandas(self):
        """A ``pandas.DataFrame``: one row per input (``name``, ``label``, ``prob``,
        ``error``, then one column of probabilities per class)."""
        pd = require("pandas", "to_pandas")
        best = [t[0] if t else None for t in self.topk(1)]
        frame = pd.DataFrame(
            {
                "name": self.names,
                "label": self.labels,
                "prob": [b["prob"] if b else np.nan for b in best],
                "error": self.errors,
            }
        )
        probs = pd.DataFrame(self.probs, columns=self.classes)
        return pd.concat([frame, probs], axis=1)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        """Input ``i`` as ``{"path", "label", "topk", "error"}``; a slice gives a list."""
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, and IndexError past the end
        tops = self.topk()[i]
        return {
            "path": self.names[i],
            "label": self.labels[i],
            "topk": tops,
            "error": self.errors[i],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        bad = sum(e is not None for e in self.errors)
        head = f"Predictions({len(self)} images, {len(self.classes)} classes"
        head += f", {bad} unreadable)" if bad else ")"
        lines = [head]
        for name, tops, err in list(zip(self.names, self.topk(3), self.errors))[:10]:
            what = (
                f"ERROR {err}" if err else ", ".join(f"{t['label']} {t['prob']:.3f}" for t in tops)
            )
            lines.append(f"  {name}: {what}")
        if len(self) > 10:
            lines.append(f"  ... {len(self) - 10} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        k = min(self.k or 3, len(self.classes))
        body = []
        for i, (name, tops, err) in enumerate(zip(self.names, self.topk(k), self.errors)):
            if i >= HTML_ROWS:
                break
            thumb = self._thumbs[i] if i < len(self._thumbs) else None
            img = (
                f"<img src='data:image/png;base64,{_png_of(thumb)}'/>" if thumb is not None else ""
            )
            if err:
                bars = f"<span style='color:#b00'>{html.escape(err)}</span>"
            else:
                bars = "".join(
                    f"<div style='display:flex;align-items:center;gap:6px'>"
                    f"<div style='width:160px;background:#eee'><div style='width:"
                    f"{100 * t['prob']:.1f}%;background:#4c72b0;height:12px'></div></div>"
                    f"<span>{html.escape(t['label'])} {100 * t['prob']:.1f}%</span></div>"
                    for t in tops
                )
            body.append(
                f"<tr><td>{img}</td><td style='text-align:left'>"
                f"{html.escape(str(name))}</td><td>{bars}</td></tr>"
            )
        more = (
            f"<p>… and {len(self) - HTML_ROWS} more (all in .probs)</p>"
            if len(self) > HTML_ROWS
            else ""
        )
        return (
            "<table><tr><th>image</th><th>input</th><th>top classes</th></tr>"
            + "".join(body)
            + "</table>"
            + more
        )


class Evaluation(dict):
    """The result of :meth:`Run.evaluate`: the mapping ``resnetlab evaluate --json``
    prints (``top1``, ``top5``, ``loss``, ``per_class``, ``confusion_matrix``, ``classes``,
    ``files``...), shown in a notebook as its scores, the per-class table and the confusion
    matrix.

    Attributes:
        figures: the matplotlib Figure of each PNG the evaluation wrote (``files``), by name:
            ``confusion_matrix`` (multi-label: ``pr_curves``), and with ``top_losses=N``
            ``top_losses`` and ``top_losses_gradcam``. A figure shows as a cell's value (or
            with ``display``); restyle it and ``savefig`` it again as any Figure.
    """

    def __init__(self, result: dict | None = None, figures: dict | None = None) -> None:
        super().__init__(result or {})
        self.figures: dict[str, Any] = {
            k.removesuffix("_png"): f for k, f in (figures or {}).items() if f is not None
        }

    def confusion_figure(self):
        """The confusion matrix as a matplotlib Figure (rows: true class)."""
        from ..core.plots import _plt

        plt = _plt()  # with the CJK fonts, for Chinese class names

        cm = np.asarray(self["confusion_matrix"])
        classes = self["classes"]
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        side = min(10, max(3.5, 0.45 * len(classes) + 2))
        fig, ax = plt.subplots(figsize=(side + 1, side), dpi=80)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if len(classes) <= 40:
            ax.set_xticks(range(len(classes)), labels=classes, rotation=60, ha="right")
            ax.set_yticks(range(len(classes)), labels=classes)
        if len(classes) <= 25:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    if cm[i, j]:
                        ax.text(
                            j,
                            i,
                            str(cm[i, j]),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black",
                        )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        return _detached(fig)

    def __repr__(self) -> str:
        if "top1" in self:
            return (
                f"Evaluation({self.get('split')} of {self.get('data')}: "
                f"{self.get('num_samples')} images, top-1 {_pct(self['top1'])}, "
                f"top-5 {_pct(self.get('top5'))}, loss {self.get('loss', 0):.4f})"
            )
        return f"Evaluation({dict.__repr__(self)})"

    def _repr_html_(self) -> str:
        if "top1" in self:
            head = [
                ("split", f"{self.get('split')} of {self.get('data')}"),
                ("images", self.get("num_samples")),
                ("top-1", _pct(self["top1"])),
                ("top-5", _pct(self.get("top5"))),
                ("balanced accuracy", _pct(self.get("balanced_accuracy"))),
                ("macro-F1", _pct(self.get("f1_macro"))),
                ("ECE", _pct(self.get("ece"))),
                ("loss", f"{self.get('loss', 0):.4f}"),
            ]
        else:
            head = [("split", self.get("split")), ("mAP", _pct(self.get("map")))]
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(name)}</td>"
            + "".join(f"<td>{m.get(k, 0):.3f}</td>" for k in ("precision", "recall", "f1"))
            + f"<td>{m.get('support', '')}</td></tr>"
            for name, m in self.get("per_class", {}).items()
        )
        per_class = (
            "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr>{rows}</table>"
        )
        out = f"<div><b>evaluation</b>{_table(head)}{per_class}"
        if self.get("confusion_matrix") is not None:
            out += f"<img src='data:image/png;base64,{_png(self.confusion_figure())}'/>"
        return out + "</div>"


class Explanations(list):
    """What :meth:`Run.explain` returns: one ``explain.Explanation`` per image (``.label``,
    ``.prob``, ``.heatmap``, ``.overlay()``), shown side by side in a notebook."""

    def figure(self):
        """The overlays side by side, each under its input's name and the class explained
        with its probability: a matplotlib Figure (a cell's value shows it)."""
        import os

        from ..core.plots import gallery_figure, wrap_label

        images = [np.asarray(e.overlay()) for e in self]
        captions = [
            wrap_label(f"{os.path.basename(getattr(e, 'name', ''))}: {e.label} {e.prob:.1%}")
            for e in self
        ]
        return _detached(gallery_figure(images, captions, "Grad-CAM: where the model looked"))

    def _repr_html_(self) -> str:
        cells = []
        for e in self:
            a = np.asarray(e.overlay())
            caption = html.escape(f"{getattr(e, 'name', '')}: {e.label} {100 * e.prob:.1f}%")
            cells.append(
                f"<figure style='display:inline-block;margin:4px'><img src='data:"
                f"image/png;base64,{_png_of(a)}'/><figcaption>{caption}"
                "</figcaption></figure>"
            )
        return "<div>" + "".join(cells) + "</div>"
