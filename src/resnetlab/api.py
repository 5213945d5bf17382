"""The Python API at the package root, for notebooks and scripts: ``resnetlab.fit`` trains a
run in one call, ``resnetlab.load`` opens one, and a :class:`Run` predicts, evaluates,
exports, reports and explains.

Everything here goes through what the command line uses: settings resolve through
``train.resolve_config`` (the same recipes, defaults and refusals as ``resnetlab train``),
images through the one evaluation transform of ``predict``, files through ``RunDir``. Errors
name the Python argument (``epochs=-1``) where the command line names its flag.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts.run import ModelMeta, RunDir
from .core.errors import ConfigError, ImageDecodeError, ResnetlabError

__all__ = ["Evaluation", "Explanations", "Predictions", "Run", "create_model", "fit", "load"]

# What Run.predict takes, said by every refusal.
ACCEPTED = (
    "a path (str or Path) to an image, a folder or a glob; bytes; a PIL image; a numpy uint8 "
    "array (HxW or HxWxC, C = 1, 3 or 4; NxHxW or NxHxWxC for several); a torch tensor, uint8 "
    "or float in [0, 1], CHW or NCHW (C = 1 or 3); or a list or other iterable of these"
)
# Rows of a prediction shown in a notebook (the object holds them all).
HTML_ROWS = 50
THUMB = 64  # side of a thumbnail in the notebook display


# ------------------------------------------------------------------ errors in Python's words

_UNSET = object()
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?: ([A-Z][A-Z_]*)\b)?")
_COMMAND = re.compile(r"resnetlab [a-z]+ [^;\n]*")  # a command to paste: left as it is


def python_message(message: str, given: dict[str, Any], known: set[str]) -> str:
    """``message`` (written for the command line) in the words of a Python call: each
    ``--flag`` of a setting becomes the argument's name, ``--flag VALUE`` becomes
    ``name=VALUE``, and a message that starts with a flag the caller gave opens with it and
    its value (``--epochs must be at least 1, got -1`` -> ``epochs=-1: must be at least 1``).
    Commands quoted for the shell (``resnetlab train --resume ...``) are left as they are."""

    def words(text: str, first: bool) -> str:
        out, pos = [], 0
        for m in _FLAG.finditer(text):
            name = m.group(1).replace("-", "_")
            if name not in known:
                continue
            out.append(text[pos : m.start()])
            value = given.get(name, _UNSET)
            said = f" {value}"
            after = text[m.end() + len(said) : m.end() + len(said) + 1]
            if value is not _UNSET and text[m.end() :].startswith(said) and not after.isalnum():
                out.append(f"{name}={value!r}")  # "--mode finetune" -> "mode='finetune'"
                pos = m.end() + len(said)
                continue
            if first and m.start() == 0 and value is not _UNSET:
                out.append(f"{name}={value!r}:")
                rest = text[m.end() :]
                # the value said again ("..., got -1") is said once
                for shown in {str(value), repr(value)}:
                    got = re.match(rf"(.*?), got {re.escape(shown)}(?=$|\s*[;.(,])", rest)
                    if got:
                        text = text[: m.end()] + got.group(1) + rest[got.end() :]
                        break
            elif m.group(2):
                out.append(f"{name}={m.group(2)}")
            else:
                out.append(name)
            pos = m.end()
        out.append(text[pos:])
        return "".join(out)

    if message.startswith("DATA "):
        message = "data=" + message[len("DATA ") :]
    pieces, pos = [], 0
    for m in _COMMAND.finditer(message):
        pieces.append(words(message[pos : m.start()], pos == 0))
        pieces.append(m.group(0))
        pos = m.end()
    pieces.append(words(message[pos:], pos == 0))
    return "".join(pieces)


class _PythonNames:
    """A ``with`` block whose ``ResnetlabError`` says Python arguments instead of flags."""

    def __init__(self, given: dict[str, Any]) -> None:
        from .train.config import TrainConfig

        self.given = given
        self.known = {f for f in TrainConfig.__dataclass_fields__} | {"config", "resume"}

    def __enter__(self) -> _PythonNames:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, ResnetlabError) or not exc.args:
            return False
        if not isinstance(exc.args[0], str) or isinstance(exc, ImageDecodeError):
            return False
        text = python_message(exc.args[0], self.given, self.known)
        if text != exc.args[0]:
            exc.args = (text, *exc.args[1:])
        return False


# ------------------------------------------------------------------------------ training


def _data_string(data: Any) -> str:
    """The ``DATA`` string for what ``fit(data=...)`` was given."""
    from torch.utils.data import Dataset

    from .data import memory

    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if isinstance(data, Dataset):
        images, labels, classes = memory.from_dataset(data)
        return memory.register(images, labels, classes)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        images, labels = data[0], data[1]
        classes = list(data[2]) if len(data) == 3 else None
        return memory.register(images, labels, classes)
    raise ConfigError(
        f"data={type(data).__name__}: give a DATA string (digits, a folder, mnist:DIR, "
        "cifar10:DIR, csv:FILE, ...), a folder path, an (images, labels) pair (uint8 arrays or "
        "tensors or PIL images; labels as ints or names), or a torch Dataset of (image, label)"
    )


def fit(
    data: Any = "digits",
    model: str = "resnet20",
    verbose: bool = True,
    *,
    config: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    **settings: Any,
) -> Run:
    """Train a run in one call and return it.

    Args:
        data: any ``DATA`` string of ``resnetlab train --data`` (``"digits"``, a folder in
            ImageFolder layout, ``"mnist:DIR"``, ``"cifar10:DIR"``, ``"csv:FILE"``,
            ``"wds:DIR"``...), a folder as a ``Path``, an in-memory pair ``(images,
            labels)`` (images: a uint8 array or tensor (N, H, W[, C]) or (N, C, H, W), or a
            list of PIL images or arrays; labels: ints or class names; a third item may name
            the classes of int labels), or a ``torch.utils.data.Dataset`` of ``(image,
            label)`` (``dataset.classes`` names them when it has them).
        model: a name from ``resnetlab.list_models()``.
        verbose: print the run's lines as ``resnetlab train`` does (the first line, one per
            epoch, the closing block with the best epoch, test top-1, calibration and run
            folder); False prints nothing.
        config: a YAML file of settings, as ``--config`` (the settings given here win).
        resume: a run folder or checkpoint to continue with its saved settings (only
            ``epochs``, ``max_steps``, ``patience`` and how it is run may change).
        **settings: any setting of ``resnetlab train`` by its name (``epochs=5``,
            ``input_size=64``, ``weights="torchvision"``, ``out="runs"``, ``name="exp1"``,
            ``model_kwargs={"shortcut": "B"}``...). They resolve exactly as the command
            line's flags do (``--weights`` picks the ``finetune`` recipe, the defaults and the
            refusals are the same) and ``config.yaml`` records them.

    Returns:
        The finished :class:`Run`.

    Raises:
        ConfigError: an unknown setting, or a value of the wrong type or out of range; the
            message names the argument (``epochs=-1``).
        DataError: data that cannot be read or used.
    """
    from .train import Trainer, resolve_config
    from .train.config import _known

    given = {"model": model, **settings}
    with _PythonNames({**given, "data": data, "config": config, "resume": resume}):
        _known(dict(given), "fit()")
        given["data"] = _data_string(data)
        if resume is not None:
            trainer = Trainer(resume=resume, verbose=verbose,
                              overrides={k: v for k, v in settings.items()})  # fmt: skip
        else:
            cfg = resolve_config(given, config_file=os.fspath(config) if config else None)
            trainer = Trainer(cfg, verbose=verbose)
        summary = trainer.fit()
    if verbose:
        from .train.closing import closing_lines

        print("\n" + "\n".join(closing_lines(summary)))
    return Run(summary["run_dir"])


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int = 3,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; with ``pretrained=True`` (torchvision's default weights) or
    ``weights=`` (``"torchvision"``, ``"torchvision:TAG"``, ``"hf-hub:ORG/NAME"``, a hub folder
    or a ``.pth``/``.safetensors`` file, as ``--weights``) with those weights loaded and their
    preprocessing attached as timm's ``pretrained_cfg`` (input size, mean/std, interpolation,
    crop; ``label_names`` when the weights name their classes).

    ``num_classes`` None keeps the weights' classifier; another count gets a fresh head (the
    backbone keeps the weights). ``in_chans`` other than the weights' adapts the first
    convolution (RGB filters summed for greyscale). Unknown names and keyword arguments are a
    ``ValueError`` naming the close matches, as without weights."""
    from .models import create_model as build

    if weights is None and not pretrained:
        return build(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    import dataclasses

    from .artifacts.preprocess import attach
    from .artifacts.weights import load_into
    from .inference.loading import pretrained_model

    spec = os.fspath(weights) if weights is not None else "torchvision"
    found = pretrained_model(name, spec)  # the weights, their classes and preprocessing
    meta = found.meta
    model = build(name, num_classes=meta.num_classes if num_classes is None else num_classes,
                  in_chans=in_chans, **kwargs)  # fmt: skip
    new_head = model.num_classes != meta.num_classes
    load_into(model, found.model.state_dict(), str(found.source), skip_classifier=new_head)
    if in_chans != meta.in_chans:  # the normalisation of the weights, per channel of ours
        mean, std = sum(meta.mean) / len(meta.mean), sum(meta.std) / len(meta.std)
        meta = dataclasses.replace(meta, in_chans=in_chans, mean=[mean] * in_chans,
                                   std=[std] * in_chans,
                                   input_size=[in_chans, *meta.input_size[1:]])  # fmt: skip
    if new_head:
        meta = dataclasses.replace(meta, num_classes=model.num_classes,
                                   classes=[str(i) for i in range(model.num_classes)])  # fmt: skip
    attach(model, meta)
    if new_head:
        model.pretrained_cfg.pop("label_names", None)
    return model.train()


def load(path: str | os.PathLike) -> Run:
    """Open a trained model: a run folder, its ``model.safetensors`` (with ``model.json``
    beside it), a checkpoint, or the project's own ``model.onnx`` / ``model.ts`` export.

    Loading is strict, as everywhere in resnetlab: metadata that disagrees with the weights
    is a ``WeightsError`` naming both files."""
    return Run(path)


# ---------------------------------------------------------------------------- the run


def _png(fig) -> str:
    """A matplotlib figure as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


class Run:
    """A trained model and what its run recorded.

    Attributes:
        path: the run folder (or the model file given to :func:`load`).
        model: the ``torch.nn.Module``, in eval mode, with its preprocessing attached as
            timm's ``pretrained_cfg``.
        meta: its ``ModelMeta`` (``model.json``: classes, input size, mean/std, preset...).
        classes: the class names, in output order.
        summary: ``summary.json`` (best epoch, accuracies, time; empty for a model file).
        history: ``metrics.csv``, one dict per epoch.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from .inference.loading import load_model

        self.path = Path(path)
        self._loaded = load_model(self.path)
        folder = self.path if self.path.is_dir() else self.path.parent
        self._folder = RunDir(folder)
        self._predictors: dict[tuple, Any] = {}

    # -- what the run holds

    @property
    def model(self) -> nn.Module:
        return self._loaded.model

    @property
    def meta(self) -> ModelMeta:
        return self._loaded.meta

    @property
    def classes(self) -> list[str]:
        return list(self._loaded.classes)

    @property
    def summary(self) -> dict[str, Any]:
        return self._folder.read_summary() if self._is_run() else {}

    @property
    def history(self) -> list[dict[str, float | None]]:
        return self._folder.read_metrics() if self._is_run() else []

    @property
    def config(self) -> dict[str, Any]:
        """``config.yaml``: every resolved setting of the run."""
        return self._folder.read_config() if self._is_run() else {}

    def _is_run(self) -> bool:
        return self._folder.has_config()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}: {self.meta.model}, {len(self.classes)} classes)"

    def curves(self):
        """The learning curves (loss, top-1, learning rate per epoch): a matplotlib Figure."""
        from .core.plots import curves_figure

        if not self.history:
            raise ConfigError(f"{self.path} has no metrics.csv: no curves to draw")
        return curves_figure(self.history, title=self._folder.name)

    def _repr_html_(self) -> str:
        s, m = self.summary, self.meta
        rows = [("model", m.model), ("classes", f"{len(self.classes)}: "
                                     + ", ".join(self.classes[:12])
                                     + (" …" if len(self.classes) > 12 else "")),
                ("input", f"{m.in_chans}x{m.size}x{m.size}, {m.preset} preset")]  # fmt: skip
        if s:
            rows += [("data", s.get("data")),
                     ("best epoch", f"{s.get('best_epoch')} of {s.get('epochs_completed')}"),
                     ("best val top-1", _pct(s.get("best_val_top1"))),
                     ("test top-1", _pct(s.get("test_top1")))]  # fmt: skip
            if s.get("temperature") is not None:
                rows.append(("calibration", f"T = {s['temperature']:.3g}"))
            rows.append(("train time", f"{s.get('train_seconds', 0):.1f} s"))
        rows.append(("folder", str(self.path)))
        out = f"<div><b>resnetlab run</b>{_table(rows)}"
        if self.history:
            curves = _png(self.curves())
            out += f"<img src='data:image/png;base64,{curves}' style='max-width:100%'/>"
        return out + "</div>"

    # -- using the model

    def _predictor(self, backend: str, device, precision: str, batch_size: int):
        from .inference.predict import Predictor

        key = (backend, str(device), precision, batch_size)
        if key not in self._predictors:
            self._predictors[key] = Predictor(self._loaded, backend=backend, device=device,
                                              precision=precision,
                                              batch_size=batch_size)  # fmt: skip
        return self._predictors[key]

    def predict(
        self,
        x: Any,
        topk: int | None = None,
        batch_size: int = 32,
        backend: str = "torch",
        device: str | None = None,
        precision: str = "fp32",
    ) -> Predictions:
        """Predict the classes of images, whatever form they are held in.

        Args:
            x: a path (``str`` or ``Path``) to an image, a folder (walked for images) or a
                glob; ``bytes`` of an image file; a PIL image; a numpy uint8 array (HxW or
                HxWxC; NxHxW or NxHxWxC for several); a torch tensor, uint8 or float in
                [0, 1], CHW or NCHW; or a list or any iterable mixing these. A bare string
                is one image (or one folder, or one glob).
            topk: classes per image in ``topk()`` and the display (default 5).
            batch_size: images per forward pass.
            backend: ``torch`` (default), ``onnx``, ``openvino``... or ``auto`` (the
                command line's default: the fastest backend measured on this machine).
            device: ``cpu``, ``cuda``... (default: as ``--device auto``).
            precision: ``fp32`` (default), or ``auto``/``bf16``... as ``--precision``.

        Returns:
            :class:`Predictions`: ``.labels``, ``.probs`` (N, C), ``.topk(k)``, per-item
            ``.errors`` (an unreadable file is an error row, the others still predicted).

        Images go through the one evaluation transform of the run (the same pixels as
        ``resnetlab predict``, ``serve``, ``evaluate`` and the validation in training).
        Anything else, or a tensor of the wrong shape or range, is a ``ConfigError``."""
        from .inference.predict import check_topk

        check_topk(topk)
        items = _gather(x)
        if not items:
            raise ConfigError(f"nothing to predict: {_describe(x)} holds no images")
        p = self._predictor(backend, device, precision, batch_size)
        n, c = len(items), len(self.classes)
        probs = np.full((n, c), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * n
        thumbs: list[np.ndarray | None] = [None] * n
        for start in range(0, n, batch_size):
            chunk = list(range(start, min(n, start + batch_size)))
            ready = []
            for i in chunk:
                try:
                    ready.append((i, _prepare(items[i][1], p)))
                except ImageDecodeError as exc:
                    errors[i] = exc.reason
            if not ready:
                continue
            batch = _stack([t for _, t in ready])
            out = p.probabilities(batch).numpy()
            for row, (i, t) in enumerate(ready):
                probs[i] = out[row]
                if i < HTML_ROWS:
                    thumbs[i] = _thumbnail(t)
        return Predictions([name for name, _ in items], probs, errors, self.classes,
                           thresholds=p.thresholds if p.multilabel else None,
                           thumbnails=thumbs, k=topk)  # fmt: skip

    def evaluate(
        self,
        data: Any = None,
        split: str | None = None,
        batch_size: int = 64,
        tta: bool = False,
        top_losses: int = 0,
        out: str | os.PathLike | None = None,
        backend: str = "torch",
        device: str | None = None,
        precision: str = "fp32",
    ) -> Evaluation:
        """Score the model on a split: top-1/top-5, balanced accuracy, macro-F1, ECE, loss,
        per-class precision/recall/F1 and the confusion matrix (as ``resnetlab evaluate``).

        Args:
            data: the data to score on (any form :func:`fit` takes); default the run's own,
                split exactly as in training.
            split: ``test`` (default, else ``val``), ``val`` or ``train``.
            top_losses: also draw the N most confidently wrong images.
            out: the folder for the files (default ``RUN/eval-SPLIT``).
            backend, device, precision: as :meth:`predict`.

        Returns:
            :class:`Evaluation`: the result mapping of ``evaluate --json`` (``top1``,
            ``per_class``, ``confusion_matrix``, ``files``...), shown as tables and the
            confusion matrix in a notebook."""
        from .analysis.evaluate import evaluate_run

        given = {"data": data, "split": split, "batch_size": batch_size, "out": out}
        with _PythonNames(given):
            if data is not None:
                data = _data_string(data)
            elif not self._loaded.has_run_config and self._is_run():
                data = self.config.get("data")
            r = evaluate_run(self._loaded, data=data, split=split, batch_size=batch_size,
                             tta=tta, top_losses=top_losses, out_dir=out, precision=precision,
                             backend=backend, device=device)  # fmt: skip
        return Evaluation(r)

    def export(
        self,
        format: str = "onnx",
        out: str | os.PathLike | None = None,
        verify: bool = True,
        int8: bool = False,
    ) -> Path:
        """Export the model (``onnx`` or ``torchscript``) as ``resnetlab export`` does, its
        metadata carrying the whole preprocessing; ``verify``: compare its outputs with
        PyTorch's (an ``ExportError`` above tolerance). Returns the file written."""
        from .inference.export import export, real_inputs

        source = self._source_for_files("export")
        with _PythonNames({"format": format, "out": out, "int8": int8}):
            real = real_inputs(source) if verify and self._loaded.has_run_config else None
            r = export(source, fmt=format, out=out, do_verify=verify, real=real, int8=int8)
        return Path(r["path"])

    def report(self, out: str | os.PathLike | None = None, data: Any = None) -> Path:
        """The HTML report (curves, confusion matrix, misclassified examples) as
        ``resnetlab report``; returns the path of ``report.html``."""
        from .analysis.report import build_report

        source = self._source_for_files("report")
        with _PythonNames({"out": out, "data": data}):
            return Path(build_report(source, data=_data_string(data) if data is not None
                                     else None, out=out))  # fmt: skip

    def explain(self, x: Any, class_name: str | None = None) -> Explanations:
        """Grad-CAM: where the model looked, for the predicted class of each image (or the
        class named ``class_name``). ``x`` as in :meth:`predict`. Returns
        :class:`Explanations` (each with ``.overlay()``, a PIL image), shown side by side in
        a notebook."""
        from .analysis.explain import Explainer

        if not any(True for _ in self.model.parameters()):
            raise ConfigError(f"{self.path}: Grad-CAM needs the weights; load the run folder "
                              "or model.safetensors, not an export")  # fmt: skip
        ex = Explainer.from_loaded(self._loaded)
        items = _gather(x)
        if not items:
            raise ConfigError(f"nothing to explain: {_describe(x)} holds no images")
        p = self._predictor("torch", None, "fp32", 32)
        out = []
        for name, payload in items:
            t = _prepare(payload, p)
            if t.is_floating_point():
                t = t.round().clamp(0, 255).to(torch.uint8)
            target = None if class_name is None else ex.class_index(class_name)
            e = ex.explain_batch(t[None], target)[0]
            e.name = name
            out.append(e)
        return Explanations(out)

    def _source_for_files(self, what: str) -> str:
        if self.path.suffix in (".onnx", ".ts"):
            raise ConfigError(f"{self.path} is an export; {what} needs the run folder (or its "
                              "model.safetensors)")  # fmt: skip
        return str(self.path)


# ---------------------------------------------------------------------- inputs of predict


def _describe(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__name__}" if not isinstance(x, str) else repr(x)


def _refuse(x: Any, why: str = "") -> ConfigError:
    what = f"{type(x).__name__}" + (f" ({why})" if why else "")
    return ConfigError(f"cannot predict on a {what}; give {ACCEPTED}")


def _gather(x: Any) -> list[tuple[str, Any]]:
    """(name, payload) for every image in ``x``, in order; a payload is a path, bytes, a
    PIL image, a uint8 (H, W, C) array or a float (C, H, W) tensor in [0, 1]."""
    from PIL import Image

    from .inference.predict import expand_inputs

    out: list[tuple[str, Any]] = []

    def add(item: Any, depth: int) -> None:
        if isinstance(item, (str, os.PathLike)):
            text = os.fspath(item)
            if isinstance(text, bytes):
                text = os.fsdecode(text)
            for p in expand_inputs([text]):
                out.append((p, p))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            out.append((f"<bytes {len(out)}>", bytes(item)))
        elif isinstance(item, Image.Image):
            name = getattr(item, "filename", "") or f"<image {len(out)}>"
            out.append((name, item))
        elif isinstance(item, np.ndarray):
            for a in _arrays(item):
                out.append((f"<array {len(out)}>", a))
        elif isinstance(item, torch.Tensor):
            for t in _tensors(item):
                out.append((f"<tensor {len(out)}>", t))
        elif isinstance(item, dict) or not isinstance(item, Iterable) or depth > 2:
            raise _refuse(item)
        else:
            for inner in item:
                add(inner, depth + 1)

    add(x, 0)
    return out


def _arrays(a: np.ndarray) -> list[np.ndarray]:
    """The images of a numpy array: HxW, HxWxC (C = 1, 3, 4), NxHxW, NxHxWxC; uint8."""
    if a.dtype != np.uint8:
        raise _refuse(a, f"dtype {a.dtype}: numpy images are uint8, 0..255; floats in [0, 1] "
                      "as a torch tensor")  # fmt: skip
    if a.ndim == 2:
        return [a[:, :, None]]
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        return [a]
    if a.ndim == 3:  # N greyscale images
        return [img[:, :, None] for img in a]
    if a.ndim == 4 and a.shape[3] in (1, 3, 4):
        return list(a)
    if a.ndim == 4 and a.shape[1] in (1, 3):
        raise _refuse(a, f"shape {a.shape} looks NCHW: numpy images are NxHxWxC, "
                      "a.transpose(0, 2, 3, 1)")  # fmt: skip
    raise _refuse(a, f"shape {a.shape}")


def _tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The images of a tensor: uint8 or float in [0, 1]; CHW or NCHW with C = 1 or 3 (HxW:
    one greyscale image). uint8 ones become (H, W, C) arrays, as numpy's."""
    t = t.detach().cpu()
    if t.dtype not in (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise _refuse(t, f"dtype {t.dtype}: tensors are uint8 (0..255) or float in [0, 1]")
    if t.dim() == 2:
        t = t[None]
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise _refuse(t, f"shape {tuple(t.shape)}: tensors are CHW or NCHW")
    if t.shape[1] not in (1, 3):
        hint = (", it looks channels-last: x.permute(2, 0, 1) (or (0, 3, 1, 2))"
                if t.shape[-1] in (1, 3) else "")  # fmt: skip
        raise _refuse(t, f"shape {tuple(t.shape)}: tensors are CHW or NCHW with 1 or 3 "
                      f"channels{hint}")  # fmt: skip
    if t.is_floating_point():
        t = t.float()
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
            raise _refuse(t, f"values {lo:.3g}..{hi:.3g}: a float tensor holds pixels in "
                          "[0, 1], before any Normalize (already normalised?)")  # fmt: skip
        return list(t)
    return [img.permute(1, 2, 0).numpy() for img in t]


def _prepare(payload: Any, predictor) -> torch.Tensor:
    """One payload as the model's input at its size: uint8 (C, H, W) through the run's
    evaluation transform (as a decoded file), or for a float tensor float (C, H, W) 0..255."""
    from PIL import Image

    from .data.images import from_pil, open_image
    from .inference.predict import NO_MATCH, is_stream, read_stream

    channels = predictor.channels
    if isinstance(payload, (str, bytes)):
        try:
            source = read_stream(payload) if isinstance(payload, str) and is_stream(payload) \
                else payload  # fmt: skip
            return predictor.preprocess(open_image(source, channels))
        except ImageDecodeError as exc:
            import glob

            if isinstance(payload, str) and glob.has_magic(payload) and not os.path.lexists(
                payload
            ):  # fmt: skip
                raise ImageDecodeError(payload, NO_MATCH) from None
            raise exc
    if isinstance(payload, Image.Image):
        return predictor.preprocess(from_pil(payload, channels))
    if isinstance(payload, np.ndarray):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[payload.shape[2]]
        a = payload[:, :, 0] if mode == "L" else np.ascontiguousarray(payload)
        return predictor.preprocess(from_pil(Image.fromarray(a, mode), channels))
    return _float_input(payload, predictor)


def _float_input(x: torch.Tensor, predictor) -> torch.Tensor:
    """A float (C, H, W) image in [0, 1] as float 0..255 at the input size: its channels made
    the model's (ITU-R 601 luma for greyscale), then the evaluation resize and crop of the
    run with the same kernel in floating point (no uint8 rounding: there is none to match)."""
    from torch.nn import functional as F

    x = x * 255.0
    if x.shape[0] != predictor.channels:
        if predictor.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            x = (x * w).sum(0, keepdim=True)
        else:
            x = x.expand(3, -1, -1)
    geometry = predictor._batch_tf.eval_geometry()
    h, w = x.shape[-2:]
    new_w, new_h = geometry.resized_size(w, h)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x[None], size=(new_h, new_w), mode=geometry.interpolation,
                          antialias=True)[0]  # fmt: skip
        if geometry.interpolation == "bicubic":
            x = x.clamp(0, 255)
    if geometry.short_side is not None:
        top = int(round((new_h - geometry.size) / 2.0))
        left = int(round((new_w - geometry.size) / 2.0))
        x = x[:, top : top + geometry.size, left : left + geometry.size]
    return x.contiguous()


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    from .data.transforms import stack_images

    if all(t.dtype == torch.uint8 for t in images):
        return stack_images(images)
    return torch.stack([t.float() for t in images])  # exact: uint8 values are whole floats


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


# ------------------------------------------------------------------------------ results


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
        out: list = []
        for row, err in zip(self.probs, self.errors):
            if err is not None:
                out.append(None)
            elif self.multilabel:
                out.append([c for c, p, t in zip(self.classes, row, self.thresholds) if p >= t])
            else:
                out.append(self.classes[int(np.argmax(row))])
        return out

    @property
    def indices(self) -> np.ndarray:
        """The index of the most probable class of each input (-1 for an error)."""
        best = np.argmax(np.nan_to_num(self.probs, nan=-1.0), axis=1)
        return np.where([e is None for e in self.errors], best, -1)

    def topk(self, k: int | None = None) -> list[list[dict[str, Any]]]:
        """The ``k`` (default 5) most probable classes of each input, most probable first:
        ``[{"label", "index", "prob"}, ...]``; an empty list for an input with an error."""
        from .inference.predict import check_topk

        k = min(check_topk(k) or self.k or 5, len(self.classes))
        rows = []
        for row, err in zip(self.probs, self.errors):
            if err is not None:
                rows.append([])
                continue
            order = np.argsort(-row, kind="stable")[:k]
            rows.append([{"label": self.classes[i], "index": int(i), "prob": float(row[i])}
                         for i in order])  # fmt: skip
        return rows

    def rows(self, k: int | None = None) -> list[dict[str, Any]]:
        """One mapping per input as ``resnetlab predict --json`` prints it:
        ``{"path", "topk", "error"}``."""
        return [{"path": n, "topk": t, "error": e}
                for n, t, e in zip(self.names, self.topk(k), self.errors)]  # fmt: skip

    def to_pandas(self):
        """A ``pandas.DataFrame``: one row per input (``name``, ``label``, ``prob``,
        ``error``, then one column of probabilities per class)."""
        try:
            import pandas as pd
        except ImportError:
            raise ConfigError("to_pandas needs pandas: pip install pandas") from None
        best = [t[0] if t else None for t in self.topk(1)]
        frame = pd.DataFrame({
            "name": self.names, "label": self.labels,
            "prob": [b["prob"] if b else np.nan for b in best], "error": self.errors,
        })  # fmt: skip
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
        return {"path": self.names[i], "label": self.labels[i], "topk": tops,
                "error": self.errors[i]}  # fmt: skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        bad = sum(e is not None for e in self.errors)
        head = f"Predictions({len(self)} images, {len(self.classes)} classes"
        head += f", {bad} unreadable)" if bad else ")"
        lines = [head]
        for name, tops, err in list(zip(self.names, self.topk(3), self.errors))[:10]:
            what = f"ERROR {err}" if err else ", ".join(f"{t['label']} {t['prob']:.3f}"
                                                        for t in tops)  # fmt: skip
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
            img = (f"<img src='data:image/png;base64,{_png_of(thumb)}'/>"
                   if thumb is not None else "")  # fmt: skip
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
            body.append(f"<tr><td>{img}</td><td style='text-align:left'>"
                        f"{html.escape(str(name))}</td><td>{bars}</td></tr>")  # fmt: skip
        more = (f"<p>… and {len(self) - HTML_ROWS} more (all in .probs)</p>"
                if len(self) > HTML_ROWS else "")  # fmt: skip
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
    matrix."""

    def confusion_figure(self):
        """The confusion matrix as a matplotlib Figure (rows: true class)."""
        from .core.plots import _plt

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
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        if "top1" in self:
            return (f"Evaluation({self.get('split')} of {self.get('data')}: "
                    f"{self.get('num_samples')} images, top-1 {_pct(self['top1'])}, "
                    f"top-5 {_pct(self.get('top5'))}, loss {self.get('loss', 0):.4f})")  # fmt: skip
        return f"Evaluation({dict.__repr__(self)})"

    def _repr_html_(self) -> str:
        if "top1" in self:
            head = [("split", f"{self.get('split')} of {self.get('data')}"),
                    ("images", self.get("num_samples")), ("top-1", _pct(self["top1"])),
                    ("top-5", _pct(self.get("top5"))),
                    ("balanced accuracy", _pct(self.get("balanced_accuracy"))),
                    ("macro-F1", _pct(self.get("f1_macro"))), ("ECE", _pct(self.get("ece"))),
                    ("loss", f"{self.get('loss', 0):.4f}")]  # fmt: skip
        else:
            head = [("split", self.get("split")), ("mAP", _pct(self.get("map")))]
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(name)}</td>"
            + "".join(f"<td>{m.get(k, 0):.3f}</td>" for k in ("precision", "recall", "f1"))
            + f"<td>{m.get('support', '')}</td></tr>"
            for name, m in self.get("per_class", {}).items()
        )
        per_class = ("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                     f"<th>support</th></tr>{rows}</table>")  # fmt: skip
        out = f"<div><b>evaluation</b>{_table(head)}{per_class}"
        if self.get("confusion_matrix") is not None:
            out += f"<img src='data:image/png;base64,{_png(self.confusion_figure())}'/>"
        return out + "</div>"


class Explanations(list):
    """What :meth:`Run.explain` returns: one ``explain.Explanation`` per image (``.label``,
    ``.prob``, ``.heatmap``, ``.overlay()``), shown side by side in a notebook."""

    def _repr_html_(self) -> str:
        cells = []
        for e in self:
            a = np.asarray(e.overlay())
            caption = html.escape(f"{getattr(e, 'name', '')}: {e.label} {100 * e.prob:.1f}%")
            cells.append(f"<figure style='display:inline-block;margin:4px'><img src='data:"
                         f"image/png;base64,{_png_of(a)}'/><figcaption>{caption}"
                         "</figcaption></figure>")  # fmt: skip
        return "<div>" + "".join(cells) + "</div>"
