"""The notebook API's three doors: ``fit`` trains a run in one call, ``create_model`` builds
a network (with weights, if asked), ``load`` opens a trained one; each gives a ``Run``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..artifacts.run import ModelMeta, RunDir
from ..core.errors import ConfigError, ImageDecodeError
from ..core.progress import Meter
from .display import HTML_ROWS, _detached, _pct, _png, _table, _thumbnail
from .inputs import _describe, _gather, _prepare, _stack
from .messages import _data_string, _PythonNames
from .results import Evaluation, Explanations, Predictions


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
    from ..train import Trainer, resolve_config
    from ..train.config import _known

    given = {"model": model, **settings}
    with _PythonNames({**given, "data": data, "config": config, "resume": resume}):
        _known(dict(given), "fit()")
        given["data"] = _data_string(data)
        if resume is not None:
            trainer = Trainer(
                resume=resume, verbose=verbose, overrides={k: v for k, v in settings.items()}
            )
        else:
            cfg = resolve_config(given, config_file=os.fspath(config) if config else None)
            trainer = Trainer(cfg, verbose=verbose)
        summary = trainer.fit()
    if verbose:
        from ..train.closing import closing_lines

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
    from ..models import create_model as build

    if weights is None and not pretrained:
        return build(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    import dataclasses

    from ..artifacts.preprocess import attach
    from ..artifacts.weights import load_into
    from ..inference.loading import pretrained_model

    spec = os.fspath(weights) if weights is not None else "torchvision"
    found = pretrained_model(name, spec)  # the weights, their classes and preprocessing
    meta = found.meta
    model = build(
        name,
        num_classes=meta.num_classes if num_classes is None else num_classes,
        in_chans=in_chans,
        **kwargs,
    )
    new_head = model.num_classes != meta.num_classes
    load_into(model, found.model.state_dict(), str(found.source), skip_classifier=new_head)
    if in_chans != meta.in_chans:  # the normalisation of the weights, per channel of ours
        mean, std = sum(meta.mean) / len(meta.mean), sum(meta.std) / len(meta.std)
        meta = dataclasses.replace(
            meta,
            in_chans=in_chans,
            mean=[mean] * in_chans,
            std=[std] * in_chans,
            input_size=[in_chans, *meta.input_size[1:]],
        )
    if new_head:
        meta = dataclasses.replace(
            meta, num_classes=model.num_classes, classes=[str(i) for i in range(model.num_classes)]
        )
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
        from ..inference.loading import load_model

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
        """The learning curves (loss, top-1, learning rate per epoch): a matplotlib Figure,
        shown as a cell's value (or with ``display``); ``savefig`` writes it to a file."""
        from ..core.plots import curves_figure
        from ..tasks import task_of

        if not self.history:
            raise ConfigError(f"{self.path} has no metrics.csv: no curves to draw")
        options = task_of(self.meta).curves_options()
        return _detached(curves_figure(self.history, title=self._folder.name, **options))

    def _repr_html_(self) -> str:
        s, m = self.summary, self.meta
        rows = [
            ("model", m.model),
            (
                "classes",
                f"{len(self.classes)}: "
                + ", ".join(self.classes[:12])
                + (" …" if len(self.classes) > 12 else ""),
            ),
            ("input", f"{m.in_chans}x{m.size}x{m.size}, {m.preset} preset"),
        ]
        if s:
            rows += [
                ("data", s.get("data")),
                ("best epoch", f"{s.get('best_epoch')} of {s.get('epochs_completed')}"),
                ("best val top-1", _pct(s.get("best_val_top1"))),
                ("test top-1", _pct(s.get("test_top1"))),
            ]
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
        from ..inference.predict import Predictor

        key = (backend, str(device), precision, batch_size)
        if key not in self._predictors:
            self._predictors[key] = Predictor(
                self._loaded,
                backend=backend,
                device=device,
                precision=precision,
                batch_size=batch_size,
            )
        return self._predictors[key]

    def predict(
        self,
        x: Any,
        topk: int | None = None,
        batch_size: int = 32,
        backend: str = "torch",
        device: str | None = None,
        precision: str = "fp32",
        progress: bool = True,
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
            progress: show the images done when there is more than one batch: a
                ``tqdm.auto`` bar in a notebook (a widget with ipywidgets), a bar on a
                terminal, a line every 30 s in a log; False shows nothing.

        Returns:
            :class:`Predictions`: ``.labels``, ``.probs`` (N, C), ``.topk(k)``, per-item
            ``.errors`` (an unreadable file is an error row, the others still predicted).

        Images go through the one evaluation transform of the run (the same pixels as
        ``resnetlab predict``, ``serve``, ``evaluate`` and the validation in training).
        Anything else, or a tensor of the wrong shape or range, is a ``ConfigError``."""
        from ..inference.predict import check_topk

        check_topk(topk)
        items = _gather(x)
        if not items:
            raise ConfigError(f"nothing to predict: {_describe(x)} holds no images")
        p = self._predictor(backend, device, precision, batch_size)
        n, c = len(items), len(self.classes)
        probs = np.full((n, c), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * n
        thumbs: list[np.ndarray | None] = [None] * n
        with Meter("predict", n, enabled=progress and n > batch_size) as meter:
            for start in range(0, n, batch_size):
                chunk = list(range(start, min(n, start + batch_size)))
                ready = []
                for i in chunk:
                    try:
                        ready.append((i, _prepare(items[i][1], p)))
                    except ImageDecodeError as exc:
                        errors[i] = exc.reason
                if ready:
                    batch = _stack([t for _, t in ready])
                    out = p.probabilities(batch).numpy()
                    for row, (i, t) in enumerate(ready):
                        probs[i] = out[row]
                        if i < HTML_ROWS:
                            thumbs[i] = _thumbnail(t)
                meter.update(len(chunk))
        return Predictions(
            [name for name, _ in items],
            probs,
            errors,
            self.classes,
            thresholds=p.thresholds,
            thumbnails=thumbs,
            k=topk,
        )

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
        progress: bool = True,
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
            progress: show the images done (as :meth:`predict`); False shows nothing.

        Returns:
            :class:`Evaluation`: the result mapping of ``evaluate --json`` (``top1``,
            ``per_class``, ``confusion_matrix``, ``files``...), shown as tables and the
            confusion matrix in a notebook; ``.figures`` holds the matplotlib Figure of each
            PNG written to ``files``."""
        from ..analysis.evaluate import evaluate_run

        given = {"data": data, "split": split, "batch_size": batch_size, "out": out}
        with _PythonNames(given):
            if data is not None:
                data = _data_string(data)
            elif not self._loaded.has_run_config and self._is_run():
                data = self.config.get("data")
            figures: dict[str, Any] = {}
            r = evaluate_run(
                self._loaded,
                data=data,
                split=split,
                batch_size=batch_size,
                tta=tta,
                top_losses=top_losses,
                out_dir=out,
                precision=precision,
                backend=backend,
                device=device,
                progress=progress,
                figures=figures,
            )
        return Evaluation(r, figures)

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
        from ..inference.export import export, real_inputs

        source = self._source_for_files("export")
        with _PythonNames({"format": format, "out": out, "int8": int8}):
            real = real_inputs(source) if verify and self._loaded.has_run_config else None
            r = export(source, fmt=format, out=out, do_verify=verify, real=real, int8=int8)
        return Path(r["path"])

    def report(self, out: str | os.PathLike | None = None, data: Any = None) -> Path:
        """The HTML report (curves, confusion matrix, misclassified examples) as
        ``resnetlab report``; returns the path of ``report.html``."""
        from ..analysis.report import build_report

        source = self._source_for_files("report")
        with _PythonNames({"out": out, "data": data}):
            return Path(
                build_report(source, data=_data_string(data) if data is not None else None, out=out)
            )

    def explain(self, x: Any, class_name: str | None = None) -> Explanations:
        """Grad-CAM: where the model looked, for the predicted class of each image (or the
        class named ``class_name``). ``x`` as in :meth:`predict`. Returns
        :class:`Explanations` (each with ``.overlay()``, a PIL image), shown side by side in
        a notebook."""
        from ..analysis.explain import Explainer

        if not any(True for _ in self.model.parameters()):
            raise ConfigError(
                f"{self.path}: Grad-CAM needs the weights; load the run folder "
                "or model.safetensors, not an export"
            )
        ex = Explainer.from_loaded(self._loaded)
        items = _gather(x)
        if not items:
            raise ConfigError(f"nothing to explain: {_describe(x)} holds no images")
        p = self._predictor("torch", None, "fp32", 32)
        out = []
        for name, payload in items:
            t = _prepare(payload, p)  # a float image stays float: predict's very input
            target = None if class_name is None else ex.class_index(class_name)
            e = ex.explain_batch(t[None], target)[0]
            e.name = name
            out.append(e)
        return Explanations(out)

    def _source_for_files(self, what: str) -> str:
        if self.path.suffix in (".onnx", ".ts"):
            raise ConfigError(
                f"{self.path} is an export; {what} needs the run folder (or its model.safetensors)"
            )
        return str(self.path)
