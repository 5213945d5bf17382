"""The model zoo: ``create_model(name)`` over a registry of named ResNets."""

from . import zoo  # noqa: F401  (registers every named model)
from .base import ClassifierNet
from .blocks import BasicBlock, Bottleneck, PadShortcut
from .cifar import CifarResNet
from .preact import PreActBlock, PreActResNet
from .preact_cifar import PreActCifarResNet
from .registry import (
    ModelEntry,
    create_model,
    get_model_entry,
    list_families,
    list_models,
    model_for_timm_name,
    register_model,
)
from .resnet import ResNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ClassifierNet",
    "ModelEntry",
    "PadShortcut",
    "PreActBlock",
    "PreActCifarResNet",
    "PreActResNet",
    "ResNet",
    "create_model",
    "get_model_entry",
    "list_families",
    "list_models",
    "model_for_timm_name",
    "register_model",
]
