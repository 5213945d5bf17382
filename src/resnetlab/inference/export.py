"""Export to ONNX (dynamic batch, preprocessing metadata inside) or TorchScript, verified;
optionally an int8 ONNX model, calibrated on the run's training images, with its accuracy
change measured on held-out images."""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..artifacts.run import RunDir, output_folder
from ..core.errors import (
    ConfigError,
    ExportError,
    FileConflictError,
)
from ..core.files import fsync_file as _fsync
from ..core.files import writing
from ..core.fmt import pct
from ..core.optional import require
from ..metrics.fingerprint import weights_fingerprint
from ..metrics.logits import iter_logits
from ..tasks import task_of
from .exported import META_KEY, onnx_session
from .exported import check_external_data as check_external_data  # backends import it here
from .loading import LoadedModel, load_model, run_pipeline

FORMATS = tuple(RunDir.EXPORTS)  # onnx, torchscript
TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.99  # --verify: top-1 of the int8 model agrees with fp32 on 99 % of images
# Multi-label models: decisions near a threshold flip with any rounding, so --verify bounds the
# ranking instead: the int8 model's mAP at most this many points below fp32's.
INT8_MAX_MAP_DROP = 1.0


WEIGHTS_KEY = "resnetlab.weights_sha256"


def _metadata(loaded: LoadedModel) -> dict[str, str]:
    """The export's metadata: the weights' fingerprint, the model's whole preprocessing
    (``resnetlab.preprocessing``: resize rule and size, interpolation, crop, mean/std, channel
    order, the input's dtype and range, temperature, classes, task, thresholds; what a client
    with only onnxruntime, Pillow and numpy reads) and model.json, then the keys of earlier
    versions."""
    from ..artifacts.preprocess import describe

    m = loaded.meta
    return {
        WEIGHTS_KEY: weights_fingerprint(loaded.model),
        "resnetlab.preprocessing": json.dumps(describe(m), ensure_ascii=False),
        META_KEY: m.dumps().strip(),
        "resnetlab.model": m.model,
        "resnetlab.classes": json.dumps(m.classes, ensure_ascii=False),
        "resnetlab.input_size": json.dumps(m.input_size),
        "resnetlab.mean": json.dumps(m.mean),
        "resnetlab.std": json.dumps(m.std),
        "resnetlab.preset": str(m.preset),
        # The graph returns raw logits; calibrated probabilities are softmax(logits / T).
        # 1.0 for an uncalibrated model, so a reader never needs a fallback.
        "resnetlab.temperature": json.dumps(float(m.temperature or 1.0)),
        # multilabel: probabilities are sigmoid(logits), a label is present from its threshold
        **{
            f"resnetlab.{k}": v if isinstance(v, str) else json.dumps(v)
            for k, v in task_of(m).metadata(m).items()
        },
    }


def _set_metadata(proto, items: dict[str, str]) -> None:
    """Replace an ONNX model's metadata_props with ``items``."""
    del proto.metadata_props[:]
    for key, value in items.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx(loaded: LoadedModel, path: Path, opset: int = 18) -> Path:
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")

    model = loaded.model.float().eval().to("cpu", memory_format=torch.contiguous_format)
    c, h, w = loaded.meta.input_size
    example = torch.randn(2, c, h, w)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    _set_metadata(proto, _metadata(loaded))
    with writing(path):  # a full disk or no permission: one line naming the export
        try:
            onnx.save(proto, str(tmp))
            _fsync(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def export_torchscript(loaded: LoadedModel, path: Path) -> Path:
    model = loaded.model.float().eval().to("cpu", memory_format=torch.contiguous_format)
    c, h, w = loaded.meta.input_size
    from ..artifacts.preprocess import describe

    extra = {
        "resnetlab.json": json.dumps(loaded.meta.to_json(), ensure_ascii=False),
        "preprocessing.json": json.dumps(describe(loaded.meta), ensure_ascii=False),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    # PyTorch marks TorchScript deprecated (the README says so and points to ONNX); the user
    # asked for this format, so its warning would only repeat that on every export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(model, torch.randn(1, c, h, w))
        with writing(path):
            try:
                torch.jit.save(scripted, str(tmp), _extra_files=extra)
                _fsync(tmp)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    return path


def is_resnetlab_export(path: Path) -> bool:
    """An ONNX or TorchScript file this project wrote (it carries our metadata)."""
    try:
        if zipfile.is_zipfile(path):  # TorchScript: a zip with our extra file
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("extra/resnetlab.json") for n in z.namelist())
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return any(p.key.startswith("resnetlab.") for p in proto.metadata_props)
    except Exception:  # anything unreadable as either is not ours
        return False


def check_replaceable(path: Path) -> None:
    """Exports are rebuilt from the model, so an earlier export may be replaced; any other
    file at the output path (weights, a checkpoint, somebody else's model) is left alone."""
    if path.is_dir():
        raise FileConflictError(f"{path} is a folder; give a file name with --out")
    if path.exists() and not is_resnetlab_export(path):
        raise FileConflictError(
            f"{path} already exists and is not a resnetlab export; it is left as it is: "
            "choose another --out, or move it away first"
        )


def onnx_logits(session, x: torch.Tensor) -> torch.Tensor:
    """Logits of an onnxruntime ``session`` for a float NCHW batch (any device or layout)."""
    batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return torch.from_numpy(session.run(None, {"input": batch})[0])


def verification_inputs(
    loaded: LoadedModel, real: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """What an export is checked on against PyTorch: seeded random batches of 1 and 5 at the
    model's input size and, when given, real preprocessed images."""
    c, h, w = loaded.meta.input_size
    g = torch.Generator().manual_seed(0)
    inputs = {
        "random batch 1": torch.randn(1, c, h, w, generator=g),
        "random batch 5": torch.randn(5, c, h, w, generator=g),
    }
    if real is not None and len(real):
        inputs["real images"] = real.float()
    return inputs


def verify(loaded: LoadedModel, path: Path, fmt: str, real: torch.Tensor | None = None) -> dict:
    """Max |difference| of logits between PyTorch and the exported file on random inputs and,
    when given, real preprocessed images; fails above ``TOLERANCE`` (scaled by the largest
    logit when that exceeds 1)."""
    model = loaded.model.float().eval().to("cpu", memory_format=torch.contiguous_format)
    inputs = verification_inputs(loaded, real)
    if fmt == "onnx":
        session = onnx_session(path)

        def run(x):
            return onnx_logits(session, x).numpy()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            scripted = torch.jit.load(str(path))

        def run(x):
            with torch.inference_mode():
                return scripted(x).numpy()

    report = {}
    for name, x in inputs.items():
        with torch.inference_mode():
            ref = model(x).numpy()
        diff = float(np.abs(run(x) - ref).max())
        report[name] = diff
        # 1e-4 absolute for logits up to 1; beyond that relative to their size (a confident
        # model's logits reach tens, where float32 reordering alone moves them by ~1e-5 each).
        limit = TOLERANCE * max(1.0, float(np.abs(ref).max()))
        if not np.isfinite(diff) or diff > limit:
            raise ExportError(
                f"{path}: {fmt} output differs from PyTorch by {diff:.3g} on {name} "
                f"(tolerance {limit:.2g})"
            )
    return report


def real_inputs(run: str | os.PathLike, count: int = 8) -> torch.Tensor | None:
    """A few preprocessed images from the data the run was trained on (for ``verify``);
    None when the model has no run folder to say what that data was."""
    loaded = load_model(run)
    if not loaded.has_run_config:
        return None
    pipe = run_pipeline(loaded, batch_size=count, num_workers=0)
    loader, tf = pipe.split_loader(_held_out_split(pipe), channels_last=False)
    x, _ = next(iter(loader))
    return tf(x)


def _held_out_split(pipe) -> str:
    for split in ("test", "val", "train"):
        if split in pipe.source.splits:
            return split
    raise ExportError(f"{pipe.source.name} has no images to measure the int8 model on")


def _calibration_batches(pipe, split: str, limit: int, batch_size: int = 16):
    """Float NCHW numpy batches of at most ``limit`` images of ``split``, preprocessed as for
    evaluation, for onnxruntime's calibration."""
    loader, tf = pipe.split_loader(split, channels_last=False)
    seen = 0
    for x, _ in loader:
        for start in range(0, len(x), batch_size):
            if seen >= limit:
                return
            xs = x[start : start + batch_size][: limit - seen]
            seen += len(xs)
            yield tf(xs).float().contiguous().numpy()


def quantize_int8(
    run: str | os.PathLike | LoadedModel,
    fp32_path: Path,
    path: Path,
    calibration: int = 64,
    measure: int = 1024,
    data: str | None = None,
    min_agreement: float | None = None,
) -> dict:
    """Static int8 quantization of an exported fp32 ONNX model with onnxruntime: weights
    per output channel (int8), activations per tensor (uint8) with ranges calibrated on
    ``calibration`` training images. Then both models score up to ``measure`` held-out images
    (test split, else val; a run with neither is scored on its training images, and the report
    says so) so the change in accuracy is known, not assumed. With ``min_agreement``, a model
    whose top-1 agrees with fp32 on fewer images is an ``ExportError`` and ``path`` is left as
    it was (an earlier export there stays)."""
    onnx = require("onnx", "--int8")
    require("onnxruntime", "--int8")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration < 1:
        raise ConfigError(f"--calibration must be at least 1 image, got {calibration}")
    loaded = run if isinstance(run, LoadedModel) else load_model(run)
    pipe = run_pipeline(loaded, data=data, batch_size=64, num_workers=0)
    calib_split = "train" if "train" in pipe.source.splits else _held_out_split(pipe)
    batches = [{"input": x} for x in _calibration_batches(pipe, calib_split, calibration)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    tmp_pre = path.with_name(f".{path.name}.pre.tmp")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        quant_pre_process(str(fp32_path), str(tmp_pre), skip_symbolic_shape=True)
        quantize_static(
            str(tmp_pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        proto = onnx.load(str(tmp))
        info = {
            "scheme": "static int8: weights per channel, uint8 activations",
            "calibration_images": sum(len(b["input"]) for b in batches),
            "calibration_split": calib_split,
        }
        _set_metadata(proto, {**_metadata(loaded), "resnetlab.quantization": json.dumps(info)})
        onnx.save(proto, str(tmp))
        compare, refused = _INT8_CHECKS[task_of(loaded.meta).name]
        report = {**info, **compare(pipe, fp32_path, tmp, measure, loaded.meta.thresholds)}
        advice = (
            f"{fp32_path} (fp32) is written and verified. Try more --calibration images, "
            "or use the fp32 model"
        )
        why = refused(report, min_agreement) if min_agreement is not None else None
        if why:
            raise ExportError(f"{path} not written: {why}; {advice}")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp_pre, tmp):
            leftover.unlink(missing_ok=True)
    return report


def _compare_int8(pipe, fp32_path: Path, int8_path: Path, measure: int, thresholds=None) -> dict:
    """Top-1 of both models and their agreement on up to ``measure`` held-out images."""
    split = _held_out_split(pipe)
    sessions = (onnx_session(fp32_path), onnx_session(int8_path))

    def both(x: torch.Tensor) -> torch.Tensor:  # one pass over the images for the two models
        return torch.stack([onnx_logits(s, x) for s in sessions])

    loader, tf = pipe.split_loader(split, channels_last=False)
    n = fp32_correct = int8_correct = agree = 0
    for out, y in iter_logits(both, loader, tf, limit=measure):
        a, b = out.argmax(-1)
        n += len(y)
        fp32_correct += int((a == y).sum())
        int8_correct += int((b == y).sum())
        agree += int((a == b).sum())
    n = max(n, 1)
    return {
        "measured_on": f"{split} ({n} images)",
        "fp32_top1": fp32_correct / n,
        "int8_top1": int8_correct / n,
        "delta_points": 100 * (int8_correct - fp32_correct) / n,
        "top1_agreement": agree / n,
        "agreement": agree / n,
    }


def _compare_int8_multilabel(
    pipe, fp32_path: Path, int8_path: Path, measure: int, thresholds: list[float] | None
) -> dict:
    """Multi-label: mAP of both models and how many label decisions (each image, each class,
    at the run's thresholds) they share, on up to ``measure`` held-out images."""
    from ..metrics.multilabel import decisions, multilabel_metrics, probabilities

    split = _held_out_split(pipe)
    sessions = (onnx_session(fp32_path), onnx_session(int8_path))

    def both(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([onnx_logits(s, x) for s in sessions])

    loader, tf = pipe.split_loader(split, channels_last=False)
    outs, labels = [], []
    for out, y in iter_logits(both, loader, tf, limit=measure):
        outs.append(out)
        labels.append(y)
    probs, y = probabilities(torch.cat(outs, dim=1)), torch.cat(labels)
    classes = list(pipe.classes)
    maps = [multilabel_metrics(p, y, classes, thresholds)["map"] or 0.0 for p in probs]
    agree = float(
        (decisions(probs[0], thresholds) == decisions(probs[1], thresholds)).double().mean()
    )
    return {
        "measured_on": f"{split} ({len(y)} images)",
        "fp32_map": maps[0],
        "int8_map": maps[1],
        "delta_points": 100 * (maps[1] - maps[0]),
        "label_agreement": agree,
        "agreement": agree,
    }


def export(
    run: str | os.PathLike,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    do_verify: bool = False,
    real: torch.Tensor | None = None,
    int8: bool = False,
    calibration: int = 64,
    data: str | None = None,
) -> dict:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ConfigError("--int8 needs --format onnx (onnxruntime runs the int8 model)")
    loaded = load_model(run)
    if int8 and data is None and not loaded.has_run_config:
        raise ConfigError(
            f"{run}: --int8 calibrates on images and this model has no run folder to take them "
            "from; give --data (the data set it was trained on)"
        )
    if not out:  # a read-only run: said before the export, with what to pass instead
        output_folder(None, loaded.home.path, f"the {fmt} file", flag="--out FILE")
    path = Path(out) if out else loaded.home.export(fmt)
    int8_path = None
    if int8:
        int8_path = path.with_suffix(".int8.onnx") if out else loaded.home.onnx_int8
    for target in (path, int8_path):
        if target is not None:
            check_replaceable(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    (export_onnx if fmt == "onnx" else export_torchscript)(loaded, path)
    result = {"path": str(path), "format": fmt, "bytes": path.stat().st_size}
    if do_verify:
        result["max_abs_diff"] = verify(loaded, path, fmt, real)
    if int8_path is not None:
        report = quantize_int8(
            loaded,
            path,
            int8_path,
            calibration=calibration,
            data=data,
            min_agreement=INT8_MIN_AGREEMENT if do_verify else None,
        )
        result["int8"] = {"path": str(int8_path), "bytes": int8_path.stat().st_size, **report}
    return result


def _top1_refused(report: dict, min_agreement: float) -> str | None:
    """Why an int8 single-label model is refused: top-1 agreement below ``min_agreement``."""
    if report["agreement"] >= min_agreement:
        return None
    return (
        f"int8 top-1 agrees with fp32 on only {pct(report['agreement'], 1)} of "
        f"{report['measured_on']} (needs {pct(min_agreement, 0)})"
    )


def _map_refused(report: dict, min_agreement: float) -> str | None:
    """Why an int8 multi-label model is refused: mAP more than INT8_MAX_MAP_DROP points down."""
    if report["delta_points"] >= -INT8_MAX_MAP_DROP:
        return None
    return (
        f"int8 mAP {pct(report['int8_map'])} is {-report['delta_points']:.2f} points below "
        f"fp32's {pct(report['fp32_map'])} on {report['measured_on']} (at most "
        f"{INT8_MAX_MAP_DROP:g} allowed)"
    )


# how an int8 export is compared with its fp32 model, and when it is refused, by task
_INT8_CHECKS = {
    "multiclass": (_compare_int8, _top1_refused),
    "multilabel": (_compare_int8_multilabel, _map_refused),
}
