"""The run folder and the model's metadata, typed: the only place that names a run's files.

``ModelMeta`` is what ``model.json`` holds: everything needed to rebuild a model and feed it
(architecture, classes, input size, normalisation, preset), in the spirit of torchvision's
``Weights`` objects, whose weights carry their own preprocessing and labels. ``RunDir`` knows
every file that ``train``, ``evaluate``, ``export`` and ``report`` read or write in a run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..core.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

# Below this side an image is a thumbnail (digits, MNIST, CIFAR): it is resized, not cropped.
IMAGENET_MIN_SIDE = 64


def default_preset(input_size: int) -> str:
    """The preprocessing preset for a model whose metadata names none: the ImageNet
    resize-and-crop from 64 pixels up, CIFAR's plain resize below."""
    return "imagenet" if input_size >= IMAGENET_MIN_SIDE else "cifar"


@dataclass
class ModelMeta:
    """What a trained model needs to be rebuilt and fed; ``model.json`` on disk.

    Fields after ``resnetlab_version`` are optional and only written when set, so files from
    older versions load and files of today keep their keys. Keys this version does not know
    (written by a newer one) are kept in ``extra`` and written back unchanged."""

    model: str
    num_classes: int
    in_chans: int
    classes: list[str]
    input_size: list[int]  # [C, H, W]
    mean: list[float]
    std: list[float]
    preset: str | None = None  # None: default_preset(input size)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    resnetlab_version: str | None = None
    # Room for the metadata later features add; absent from model.json while unset.
    task: str | None = None  # "multiclass" (None) or "multilabel"
    thresholds: list[float] | None = None  # per-class decision thresholds (multi-label)
    temperature: float | None = None  # calibration: logits are divided by it
    # The evaluation resize the weights were published with, scaled to this input size
    # (torchvision's resnet50 IMAGENET1K_V2: 232 for a 224 crop); None: 256/224 of the size.
    resize_size: int | None = None
    interpolation: str | None = None  # bilinear (None) or the weights' own, e.g. bicubic
    extra: dict[str, Any] = field(default_factory=dict)

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "model",
        "num_classes",
        "in_chans",
        "classes",
        "input_size",
        "mean",
        "std",
    )
    # Written even when None: model.json has always held them.
    ALWAYS: ClassVar[tuple[str, ...]] = (
        "model",
        "num_classes",
        "in_chans",
        "classes",
        "input_size",
        "mean",
        "std",
        "preset",
        "model_kwargs",
        "weights",
        "resnetlab_version",
    )

    def __post_init__(self) -> None:
        self.num_classes, self.in_chans = int(self.num_classes), int(self.in_chans)
        self.classes = [str(c) for c in self.classes]
        self.input_size = [int(v) for v in self.input_size]
        self.mean, self.std = [float(v) for v in self.mean], [float(v) for v in self.std]
        self.model_kwargs = dict(self.model_kwargs or {})
        if self.preset is None:
            self.preset = default_preset(self.size)

    @property
    def size(self) -> int:
        """The side of the square input, in pixels."""
        return self.input_size[-1]

    @property
    def multilabel(self) -> bool:
        """Several labels per image: sigmoid outputs, each with its threshold."""
        return self.task == "multilabel"

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "model.json") -> ModelMeta:
        """From the mapping ``model.json`` holds; ``source`` names it in errors."""
        if not isinstance(data, dict):
            raise WeightsError(f"{source}: not a JSON object; it is not a resnetlab model.json")
        for key in cls.REQUIRED:
            if key not in data:
                raise WeightsError(f"{source}: missing {key!r}; it is not a resnetlab model.json")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The mapping written to ``model.json`` (the keys it has always had, then the rest)."""
        out = {k: getattr(self, k) for k in self.ALWAYS}
        out["input_size"], out["mean"], out["std"] = (
            list(self.input_size),
            list(self.mean),
            list(self.std),
        )
        out["classes"], out["model_kwargs"] = list(self.classes), dict(self.model_kwargs)
        for f in dataclasses.fields(self):
            if f.name not in self.ALWAYS and f.name != "extra":
                value = getattr(self, f.name)
                if value is not None:
                    out[f.name] = value
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelMeta:
        """``model.json`` from disk; a missing or damaged file is a ``WeightsError``."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"{p}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{p}: not valid JSON ({exc})") from None
        return cls.from_json(data, str(p))


def user_cache_dir() -> Path:
    """The user's cache folder for resnetlab: ``$XDG_CACHE_HOME/resnetlab``, else
    ``~/.cache/resnetlab``. A model whose run folder cannot be written keeps its caches here."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnetlab"


def can_write(folder: str | os.PathLike) -> bool:
    """Whether a file can be created in ``folder`` (which exists): tried, not guessed from the
    permission bits, which a read-only mount, root or a shared store's ACLs make lie."""
    return _write_problem(Path(folder)) is None


def _write_problem(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None when one can."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(tmp)
    return None


def output_folder(
    given: str | os.PathLike | None, default: str | os.PathLike, what: str, flag: str = "--out DIR"
) -> Path:
    """The folder ``what`` (say, "the evaluation files") is written to, made now: ``given``
    (``--out``), else ``default`` (in the run folder). One that cannot be written is a one-line
    error saying what to pass (``flag``), before any work is done: a run folder on a read-only
    mount is used as it is, with its outputs elsewhere."""
    folder = Path(given if given else default)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        problem = _write_problem(folder)
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
    if problem is None:
        return folder
    if given:
        raise ConfigError(
            f"--out {folder} cannot be written ({problem}); give another folder for {what}"
        )
    raise ConfigError(f"{folder} cannot be written ({problem}): give {flag} for {what}")


# What ``io.atomic_write_bytes`` leaves behind when its process is killed mid-write:
# ".<file name>.<8 random characters>.tmp".
_STALE_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


class RunDir:
    """A run folder (``runs/NAME``) and every file in it.

    ``RunDir(path).weights`` is ``path/model.safetensors`` whether or not it exists yet;
    the ``has_*`` and ``read_*`` methods look at what is there."""

    CONFIG = "config.yaml"  # the resolved configuration (re-runnable)
    LAST_CHECKPOINT = "checkpoint-last.pt"  # full state for --resume
    BEST_CHECKPOINT = "checkpoint-best.pt"
    WEIGHTS = "model.safetensors"  # the best epoch's weights
    META = "model.json"  # ModelMeta
    METRICS = "metrics.csv"  # one row per epoch
    SUMMARY = "summary.json"
    REPORT = "report.html"
    REPORT_FILES = "report-files"  # the report's figures
    ONNX = "model.onnx"
    ONNX_INT8 = "model.int8.onnx"
    TORCHSCRIPT = "model.ts"
    BACKEND_CHOICE = "backend.json"  # --backend auto's measurements, per machine
    CALIBRATION = "calibration.json"  # reliability bins before/after temperature scaling
    EXPLAIN = "gradcam"  # Grad-CAM overlays of `resnetlab explain`
    OPENVINO_CACHE = "openvino-cache"  # compiled OpenVINO models, one folder per key
    LR_FIND_PLOT = "lr_find.png"
    LR_FIND_JSON = "lr_find.json"
    EVAL_PREFIX = "eval-"  # eval-SPLIT/: metrics.json and plots of `evaluate`
    TENSORBOARD_PREFIX = "events.out.tfevents"
    # The training using the folder holds a lock on it (an flock, dropped when its process
    # ends; the file is removed when it stops, but one killed leaves it behind).
    LOCK = ".train.lock"
    # How the training ended: finished, stopped (resumable) or failed, with the reason.
    STATUS = "status.json"
    # The experiment tracker's run this one reports to (--tracker): a resumed run continues it.
    TRACKER = "tracker.json"
    # Written before the first checkpoint: a folder holding only these (a run stopped during
    # start-up) may be taken over by the same command instead of being refused.
    STARTUP_FILES: ClassVar[tuple[str, ...]] = (CONFIG, METRICS, LOCK, STATUS, TRACKER)
    EXPORTS: ClassVar[dict[str, str]] = {"onnx": ONNX, "torchscript": TORCHSCRIPT}

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------------- files

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def last_checkpoint(self) -> Path:
        return self.path / self.LAST_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.path / self.BEST_CHECKPOINT

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def meta(self) -> Path:
        return self.path / self.META

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def report_files(self) -> Path:
        return self.path / self.REPORT_FILES

    @property
    def onnx(self) -> Path:
        return self.path / self.ONNX

    @property
    def onnx_int8(self) -> Path:
        return self.path / self.ONNX_INT8

    @property
    def backend_choice(self) -> Path:
        return self.path / self.BACKEND_CHOICE

    @property
    def calibration(self) -> Path:
        return self.path / self.CALIBRATION

    @property
    def explain_dir(self) -> Path:
        return self.path / self.EXPLAIN

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    @property
    def status(self) -> Path:
        return self.path / self.STATUS

    @property
    def tracker(self) -> Path:
        return self.path / self.TRACKER

    @property
    def lr_find_plot(self) -> Path:
        return self.path / self.LR_FIND_PLOT

    @property
    def lr_find_json(self) -> Path:
        return self.path / self.LR_FIND_JSON

    def export(self, fmt: str) -> Path:
        """Where ``export --format fmt`` writes by default."""
        return self.path / self.EXPORTS[fmt]

    @property
    def openvino_cache(self) -> Path:
        return self.path / self.OPENVINO_CACHE

    @classmethod
    def model_cache(cls, key: str) -> RunDir:
        """The stand-in for a run folder that cannot be written: ``user_cache_dir()/models/KEY``
        (``key`` from the weights' fingerprint) holds the same cache files (backend.json,
        model.onnx, openvino-cache/) under the same names."""
        return cls(user_cache_dir() / "models" / key)

    def writable(self) -> bool:
        """Whether files can be written into the folder (it exists and is not read-only)."""
        return self.path.is_dir() and can_write(self.path)

    def eval_dir(self, split: str) -> Path:
        return self.path / f"{self.EVAL_PREFIX}{split}"

    # ------------------------------------------------------------------------ contents

    def has_config(self) -> bool:
        """A config.yaml is what makes a folder a run (its data can be found again)."""
        return self.config.is_file()

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config.read_text(encoding="utf-8"))

    def config_text(self) -> str:
        """config.yaml as written; empty when there is none."""
        return self.config.read_text(encoding="utf-8") if self.has_config() else ""

    def read_meta(self) -> ModelMeta:
        return ModelMeta.read(self.meta)

    def read_summary(self) -> dict[str, Any]:
        """summary.json; empty when the run has not finished."""
        if not self.summary.is_file():
            return {}
        return json.loads(self.summary.read_text(encoding="utf-8"))

    def read_metrics(self) -> list[dict[str, float | None]]:
        """metrics.csv as numbers, one dict per epoch; empty when there is none."""
        if not self.metrics.is_file():
            return []
        with open(self.metrics, newline="", encoding="utf-8") as f:
            return [
                {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(f)
            ]

    def only_startup_files(self) -> bool:
        """Nothing in the folder but what a run writes before its first checkpoint."""
        if not self.path.is_dir():
            return True
        return all(
            p.name in self.STARTUP_FILES or p.name.startswith(self.TENSORBOARD_PREFIX)
            for p in self.path.iterdir()
        )

    def is_empty(self) -> bool:
        return not self.path.is_dir() or not any(self.path.iterdir())

    def clear_stale_temp_files(self) -> list[Path]:
        """Remove the temp files of writes that a killed process never finished (only ours)."""
        removed = []
        for p in self.path.iterdir():
            if p.is_file() and _STALE_TEMP.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
        if removed:
            log.info("removed %d unfinished temp file(s) from %s", len(removed), self.path)
        return removed
