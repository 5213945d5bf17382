"""``export --format openvino``: an OpenVINO IR (``model.xml`` + ``model.bin``) for deployers.

The IR takes ``input`` (N, C, H, W float32, any batch) and returns ``logits``, converted from
the PyTorch model by OpenVINO itself (fp32 weights). Its runtime info carries what a client
needs without resnetlab: ``resnetlab/*`` (the model, classes, weights fingerprint, task,
temperature, thresholds and ``preprocessing``: resize, crop, interpolation, mean/std), and
OpenVINO's Model API ``model_info`` (model type, mean and scale values in 0-255 units,
labels), read by ``model.get_rt_info()``.

``--verify`` checks the fp32 IR against PyTorch as the ONNX export is checked; on a CPU with
native bf16 (AMX, AVX-512 BF16) it also runs the IR in bf16 and reports how far that moves
the logits and how often its top-1 agrees. ``--int8`` also writes ``model.int8.xml``: the
static int8 ONNX model (calibrated on the run's training images) as an IR, its top-1
agreement with fp32 measured on held-out images.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts.run import RunDir, output_folder
from ..core.errors import ConfigError, ExportError, FileConflictError
from ..tasks import task_of
from .export import TOLERANCE, _metadata, export_onnx, quantize_int8, verification_inputs
from .loading import LoadedModel, load_model

IR = "model.xml"
IR_INT8 = "model.int8.xml"
RT_SECTION = "resnetlab"


def _ov():
    from ..core.optional import require

    return require("openvino", "--format openvino")


def preprocessing(loaded: LoadedModel) -> dict[str, Any]:
    """The evaluation preprocessing as plain values (as the hub export's config says it)."""
    from .hub import preprocessing as hub_preprocessing

    meta = loaded.meta
    pre = hub_preprocessing(meta)
    return {
        "color": "RGB" if meta.in_chans == 3 else "L",
        "resize": "shorter_side" if pre["crop_mode"] == "center" else "both_sides",
        "resize_size": pre["resize"],
        "crop": "center" if pre["crop_mode"] == "center" else "none",
        "interpolation": pre["interpolation"],
        "input_size": pre["input_size"],
        "layout": "NCHW",
        "scale": 1 / 255,
        "mean": pre["mean"],
        "std": pre["std"],
        "output": "logits",
        "temperature": float(meta.temperature or 1.0),
        "task": task_of(meta).name,
    }


def rt_info(loaded: LoadedModel) -> dict[str, dict[str, str]]:
    """The runtime info sections of the IR: ``resnetlab`` and Model API's ``model_info``."""
    meta = loaded.meta
    ours = {k.removeprefix("resnetlab."): v for k, v in _metadata(loaded).items()}
    ours["preprocessing"] = json.dumps(preprocessing(loaded), ensure_ascii=False)
    pre = preprocessing(loaded)
    info = {
        "model_type": "Classification",
        "mean_values": " ".join(f"{v * 255:.6g}" for v in pre["mean"]),
        "scale_values": " ".join(f"{v * 255:.6g}" for v in pre["std"]),
        "resize_type": "crop" if pre["crop"] == "center" else "standard",
        "reverse_input_channels": "False",
        # Model API splits its labels on spaces: a name with spaces keeps them as underscores
        # (the exact names are resnetlab/classes)
        "labels": " ".join(c.replace(" ", "_") for c in meta.classes),
        "multilabel": str(meta.multilabel),
    }
    return {RT_SECTION: ours, "model_info": info}


def _check_replaceable(path: Path) -> None:
    """An earlier IR export may be replaced; any other file at the path is left alone."""
    if path.is_dir():
        raise FileConflictError(f"{path} is a folder; give a file name ending in .xml with --out")
    if path.suffix != ".xml":
        raise ConfigError(
            f"--out {path}: an OpenVINO IR is an .xml file (its weights go to .bin beside it)"
        )
    if path.exists():
        try:
            ours = f"<{RT_SECTION}>" in path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            raise FileConflictError(
                f"{path} already exists and is not a resnetlab export; it "
                "is left as it is: choose another --out"
            )


def _convert(loaded: LoadedModel):
    ov = _ov()
    model = loaded.model.float().eval().to("cpu", memory_format=torch.contiguous_format)
    c, h, w = loaded.meta.input_size
    import warnings

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's, inside OpenVINO
        ir = ov.convert_model(
            model, example_input=torch.zeros(1, c, h, w), input=[ov.PartialShape([-1, c, h, w])]
        )
    _name(ir)
    return ir


def _name(ir) -> None:
    ir.inputs[0].get_tensor().set_names({"input"})
    ir.outputs[0].get_tensor().set_names({"logits"})


def _annotate(ir, loaded: LoadedModel, precision: str) -> None:
    for section, values in rt_info(loaded).items():
        for key, value in values.items():
            ir.set_rt_info(value, [section, key])
    ir.set_rt_info(precision, [RT_SECTION, "precision"])


def read_rt_info(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The ``resnetlab`` and ``model_info`` runtime info of an IR file, as text."""
    ov = _ov()
    ir = ov.Core().read_model(str(path))
    out = {}
    for section in (RT_SECTION, "model_info"):
        if ir.has_rt_info([section]):
            keys = ir.get_rt_info([section]).astype(dict)
            out[section] = {k: ir.get_rt_info([section, k]).astype(str) for k in keys}
    return out


def _compile(path: Path, precision: str = "f32"):
    ov = _ov()
    core = ov.Core()
    return core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})


def has_native_bf16() -> bool:
    ov = _ov()
    try:
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001  a plugin without the property
        return False
    return "BF16" in caps


def ir_logits(compiled, x: torch.Tensor) -> np.ndarray:
    return np.asarray(compiled(x.float().numpy())[compiled.outputs[0]])


def verify_ir(loaded: LoadedModel, path: Path, real: torch.Tensor | None = None) -> dict:
    """fp32: max |difference| of logits from PyTorch, failing above the ONNX export's
    tolerance; bf16 (where the CPU has it natively): the same difference and the top-1
    agreement, reported."""
    model = loaded.model.float().eval().to("cpu", memory_format=torch.contiguous_format)
    compiled = _compile(path, "f32")
    report: dict[str, Any] = {}
    refs = {}
    for name, x in verification_inputs(loaded, real).items():
        with torch.inference_mode():
            ref = model(x).numpy()
        refs[name] = (x, ref)
        diff = float(np.abs(ir_logits(compiled, x) - ref).max())
        report[name] = diff
        limit = TOLERANCE * max(1.0, float(np.abs(ref).max()))
        if not np.isfinite(diff) or diff > limit:
            raise ExportError(
                f"{path}: OpenVINO output differs from PyTorch by {diff:.3g} on "
                f"{name} (tolerance {limit:.2g})"
            )
    out: dict[str, Any] = {"fp32": report}
    if has_native_bf16():
        half = _compile(path, "bf16")
        diffs, agree, total = {}, 0, 0
        for name, (x, ref) in refs.items():
            got = ir_logits(half, x)
            diffs[name] = float(np.abs(got - ref).max())
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
            total += len(ref)
        out["bf16"] = {"max_abs_diff": diffs, "top1_agreement": agree / max(total, 1)}
    return out


def export_openvino(
    run: str | os.PathLike | LoadedModel,
    out: str | os.PathLike | None = None,
    do_verify: bool = False,
    real: torch.Tensor | None = None,
    int8: bool = False,
    calibration: int = 64,
    data: str | None = None,
) -> dict[str, Any]:
    """Write the IR (``RUN/model.xml`` + ``.bin``, or ``out``); see the module's doc."""
    ov = _ov()
    loaded = run if isinstance(run, LoadedModel) else load_model(run)
    if int8 and data is None and not loaded.has_run_config:
        raise ConfigError(
            f"{run}: --int8 calibrates on images and this model has no run folder "
            "to take them from; give --data (the data set it was trained on)"
        )
    if not out:
        output_folder(None, loaded.home.path, "the OpenVINO IR", flag="--out FILE.xml")
    path = Path(out) if out else loaded.home.path / IR
    int8_path = path.with_name(path.stem + ".int8.xml") if int8 else None
    for target in (path, int8_path):
        if target is not None:
            _check_replaceable(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    ir = _convert(loaded)
    _annotate(ir, loaded, "fp32")
    ov.save_model(ir, str(path), compress_to_fp16=False)
    result: dict[str, Any] = {
        "path": str(path),
        "format": "openvino",
        "bytes": path.stat().st_size + path.with_suffix(".bin").stat().st_size,
    }
    if do_verify:
        result["verify"] = verify_ir(loaded, path, real)
    if int8_path is not None:
        result["int8"] = _int8(loaded, int8_path, calibration, data, do_verify, real)
    return result


def _int8(loaded, int8_path: Path, calibration: int, data, do_verify: bool, real) -> dict:  # noqa: ARG001
    """The static int8 ONNX model (onnxruntime's QDQ, calibrated on training images) as an IR,
    which OpenVINO runs with int8 kernels."""
    ov = _ov()
    with tempfile.TemporaryDirectory(prefix="resnetlab-ov-") as tmp:
        fp32_onnx, int8_onnx = Path(tmp) / RunDir.ONNX, Path(tmp) / RunDir.ONNX_INT8
        export_onnx(loaded, fp32_onnx)
        report = quantize_int8(loaded, fp32_onnx, int8_onnx, calibration=calibration, data=data)
        ir = ov.convert_model(str(int8_onnx))
        _name(ir)
        _annotate(ir, loaded, "int8")
        ov.save_model(ir, str(int8_path), compress_to_fp16=False)
    out = {
        "path": str(int8_path),
        **report,
        "bytes": int8_path.stat().st_size + int8_path.with_suffix(".bin").stat().st_size,
    }
    if real is not None and len(real):
        model = loaded.model.float().eval().to("cpu", memory_format=torch.contiguous_format)
        with torch.inference_mode():
            ref = model(real.float()).numpy()
        got = ir_logits(_compile(int8_path, "f32"), real)
        agreement = float((got.argmax(1) == ref.argmax(1)).mean())
        out["ir_top1_agreement"] = agreement  # on the --verify images
    return out
