"""Training: configuration, optimizers and schedules, the engine, checkpoints."""

from .config import RECIPES, TrainConfig, resolve_config
from .engine import NonFiniteLoss, RunStopped, Trainer, evaluate_loader

__all__ = [
    "RECIPES",
    "NonFiniteLoss",
    "RunStopped",
    "TrainConfig",
    "Trainer",
    "evaluate_loader",
    "resolve_config",
]
