"""The one guard for optional dependencies: a missing package is one line naming the extra.

Every import of a package that ``pip install resnetlab`` alone does not bring goes through
:func:`require`, so the user reads ``onnx export needs the onnx package: pip install
'resnetlab[export]'`` instead of an ``ImportError`` traceback from deep inside a command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError

# package -> the extra of pyproject.toml that installs it
EXTRAS = {
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "openvino": "openvino",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "optuna": "tune",
    "tensorboard": "tensorboard",
    "captum": "explain",
    "h5py": "convert",
    "google.protobuf": "convert",
    "webdataset": "wds",
    "huggingface_hub": "hub",
    "mlflow": "tracking",
    "wandb": "tracking",
    "datasets": "hf",
}
# the name pip knows it by, where it differs from the import name
PIP_NAMES = {
    "multipart": "python-multipart",
    "python_multipart": "python-multipart",
    "google.protobuf": "protobuf",
    "prometheus_client": "prometheus-client",
}


class MissingDependencyError(ConfigError):
    """An optional package a feature needs is not installed; the message says what to install."""

    kind = "missing_dependency"

    def __init__(self, module: str, feature: str) -> None:
        self.module = module
        top = module.split(".")[0] if module not in EXTRAS else module
        extra = EXTRAS.get(module) or EXTRAS.get(top)
        pip_name = PIP_NAMES.get(module, top.replace("_", "-"))
        install = f"pip install 'resnetlab[{extra}]'" if extra else f"pip install {pip_name}"
        also = f" (or pip install {pip_name})" if extra else ""
        super().__init__(f"{feature} needs the {pip_name} package: {install}{also}")


def require(module: str, feature: str) -> ModuleType:
    """``import module`` for ``feature`` (as the user knows it: "--tensorboard", "ONNX
    export"); a missing package is a :class:`MissingDependencyError` naming the extra. Only the
    package itself missing is turned into that line: an ImportError from inside an installed
    package (a broken install, a version clash) keeps its traceback."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if (
            missing == module
            or module.startswith(missing + ".")
            or missing.startswith(module + ".")
        ):
            raise MissingDependencyError(module, feature) from None
        raise
