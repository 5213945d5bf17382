"""The project's own exports read back: an ONNX file or a TorchScript file that ``export``
wrote is a model like a run folder is (``predict RUN/model.onnx``, ``resnetlab.load``).

Both carry the model's metadata (``ModelMeta``: classes, preprocessing, calibration), ONNX in
its ``metadata_props``, TorchScript in the extra file ``resnetlab.json``. Opening an ONNX file
checks that its external data (if any) stays in its own folder.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..artifacts.run import ModelMeta
from ..core.errors import ExportError, MissingFileError, WeightsError
from ..core.optional import require
from ..tasks import task_of

# The metadata keys an ONNX export carries (``export._metadata`` writes them).
META_KEY = "resnetlab.model_json"  # the whole model.json
TORCHSCRIPT_META = "resnetlab.json"  # TorchScript's extra file


def check_external_data(path: Path) -> None:
    """External tensor files must lie inside the model's own folder (no absolute paths, no
    ``..``): a crafted model could otherwise make the runtime read any file."""
    onnx = require("onnx", "loading an ONNX model")
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    root = path.parent.resolve()
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise ExportError(
                f"{path}: tensor {tensor.name!r} points at external data {location!r} outside "
                f"{root}; refusing to load it"
            )


def onnx_session(path: str | os.PathLike):
    ort = require("onnxruntime", "running an ONNX model")

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such ONNX file")
    check_external_data(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """An ONNX export as a module: ``forward`` runs onnxruntime on the CPU, so everything
    that runs a torch model (predict, evaluate, serve) runs the exported graph. It has no
    parameters and no gradient (Grad-CAM and fine-tuning need the weights)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path)
        self.runtime = "onnxruntime"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # FX tracing (BatchNorm folding) stops here
            raise TypeError("OnnxModule runs real tensors only")
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = torch.from_numpy(self.session.run(None, {"input": batch})[0])
        return out.to(x.device)

    def __getstate__(self):  # an onnxruntime session does not pickle: open the file again
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self.session = onnx_session(self.path)


def _meta_from_props(props: dict[str, str], path: Path) -> ModelMeta:
    """The ``ModelMeta`` an ONNX export records: the whole model.json where it has it, else
    rebuilt from the keys of older exports."""
    if META_KEY in props:
        return ModelMeta.from_json(json.loads(props[META_KEY]), f"{path} ({META_KEY})")
    try:
        input_size = json.loads(props["resnetlab.input_size"])
        data = {
            "model": props["resnetlab.model"],
            "classes": json.loads(props["resnetlab.classes"]),
            "input_size": input_size,
            "in_chans": input_size[0],
            "mean": json.loads(props["resnetlab.mean"]),
            "std": json.loads(props["resnetlab.std"]),
            "preset": props.get("resnetlab.preset"),
        }
    except (KeyError, ValueError, TypeError, IndexError):
        raise WeightsError(
            f"{path}: an ONNX file without resnetlab's metadata; give the run folder it was "
            "exported from, or export it again with `resnetlab export RUN --format onnx`"
        ) from None
    data["num_classes"] = len(data["classes"])
    temperature = float(props.get("resnetlab.temperature", "1.0"))
    data["temperature"] = None if temperature == 1.0 else temperature
    task = task_of(props.get("resnetlab.task"))
    data.update(task.from_metadata(lambda key: props.get(f"resnetlab.{key}")))
    return ModelMeta.from_json(data, str(path))


def load_onnx(path: Path) -> tuple[nn.Module, ModelMeta]:
    """(a module running the export, its metadata) from an ONNX file ``export`` wrote."""
    module = OnnxModule(path)
    props = dict(module.session.get_modelmeta().custom_metadata_map)
    return module.eval(), _meta_from_props(props, path)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive written by ``export`` (a zip holding our extra file)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(f"extra/{TORCHSCRIPT_META}") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_torchscript(path: Path) -> tuple[nn.Module, ModelMeta]:
    """(the scripted module, its metadata) from a TorchScript file ``export`` wrote."""
    if not is_torchscript(path):
        raise WeightsError(
            f"{path}: not a TorchScript file from `resnetlab export` (it has no "
            f"extra/{TORCHSCRIPT_META}); give the run folder, or export it again"
        )
    extra = {TORCHSCRIPT_META: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    try:
        data = json.loads(extra[TORCHSCRIPT_META])
    except ValueError as exc:
        raise WeightsError(f"{path}: its {TORCHSCRIPT_META} is not valid JSON ({exc})") from None
    return module.eval(), ModelMeta.from_json(data, f"{path} ({TORCHSCRIPT_META})")
