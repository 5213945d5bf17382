"""The model zoo: ``create_model(name)`` over a registry of named ResNets."""

from .base import ClassifierNet
from .blocks import BasicBlock, Bottleneck, PadShortcut
from .cifar import CifarResNet
from .registry import ModelEntry, create_model, get_model_entry, list_models, register_model
from .resnet import ResNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ClassifierNet",
    "ModelEntry",
    "PadShortcut",
    "ResNet",
    "create_model",
    "get_model_entry",
    "list_models",
    "register_model",
]
