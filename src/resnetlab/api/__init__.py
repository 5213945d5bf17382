"""The Python API at the package root, for notebooks and scripts: ``resnetlab.fit`` trains a
run in one call, ``resnetlab.load`` opens one, and a :class:`Run` predicts, evaluates,
exports, reports and explains.

Everything here goes through what the command line uses: settings resolve through
``train.resolve_config`` (the same recipes, defaults and refusals as ``resnetlab train``),
images through the one evaluation transform of ``predict``, files through ``RunDir``. Errors
name the Python argument (``epochs=-1``) where the command line names its flag.
"""

from .messages import python_message
from .results import Evaluation, Explanations, Predictions
from .session import Run, create_model, fit, load

__all__ = [
    "Evaluation",
    "Explanations",
    "Predictions",
    "Run",
    "create_model",
    "fit",
    "load",
    "python_message",
]
