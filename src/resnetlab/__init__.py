"""resnetlab: residual networks for image classification, from one tool.

The Python API (``docs/api.md``): ``create_model`` and ``list_models`` build networks;
``fit`` trains a run in one call and ``load`` opens one (a run folder, ``model.safetensors``,
``model.onnx`` or ``model.ts``); both give a ``Run`` (``.predict``, ``.evaluate``, ``.export``,
``.report``, ``.explain``, ``.summary``, ``.history``). Those are imported on first use, so
``import resnetlab`` (and ``resnetlab --help``) stays quick.
"""

from typing import TYPE_CHECKING

from .models import list_models

__version__ = "0.1.0"
__all__ = [
    "Evaluation",
    "Explanations",
    "Predictions",
    "Run",
    "__version__",
    "create_model",
    "fit",
    "list_models",
    "load",
]

# Names resolved on first use, from the modules that define them. create_model is api's:
# the zoo's models.create_model, which with pretrained=True / weights= also loads weights.
_LAZY = {"create_model", "fit", "load", "Run", "Predictions", "Evaluation", "Explanations"}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time ``__getattr__`` imports them
    from .api import Evaluation, Explanations, Predictions, Run, create_model, fit, load


def __getattr__(name: str):
    if name in _LAZY:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
