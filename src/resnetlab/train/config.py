"""Training configuration: one dataclass, recipes, YAML in and out.

Precedence, lowest first: the defaults here < ``--recipe`` < ``--config FILE.yaml`` < flags
given on the command line. The resolved result is saved as ``config.yaml`` in the run folder
and ``resnetlab train --config RUN/config.yaml`` re-runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..data import DataConfig
from ..errors import ConfigError

MODES = ("auto", "scratch", "finetune", "feature-extract")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "multistep", "onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig(DataConfig):
    """Every setting of a run: the data settings (inherited from ``DataConfig``), model,
    recipe and system, flat so that flags and YAML keys map one to one."""

    # model
    model: str = "resnet20"
    model_kwargs: dict = field(default_factory=dict)
    weights: str | None = None  # "torchvision" or a .pth / .safetensors path
    mode: str = "auto"  # scratch without weights, finetune with
    backbone_lr_mult: float = 1.0
    unfreeze_schedule: list[int] = field(default_factory=list)
    # recipe
    recipe: str | None = None
    epochs: int = 20
    batch_size: int = 64  # DataConfig's field, with the demo recipe's default
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float = 0.0
    clip_grad: float | None = None
    patience: int | None = None
    # system
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    sync_bn: bool = False
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: end of epoch only
    max_steps: int | None = None  # stop (resumably) after this many optimizer steps
    out: str = "runs"
    name: str | None = None
    tensorboard: bool = False

    def data_config(self) -> DataConfig:
        return DataConfig(**{f.name: getattr(self, f.name) for f in fields(DataConfig)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        def bad(msg):
            raise ConfigError(msg)

        if self.mode not in MODES:
            bad(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"--optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad(f"--schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            bad(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.epochs < 1:
            bad(f"--epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            bad(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            bad(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            bad(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema_decay < 1:
            bad(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.mixup < 0 or self.cutmix < 0:
            bad("--mixup and --cutmix are Beta(alpha, alpha) parameters and must be >= 0")
        if self.backbone_lr_mult < 0:
            bad(f"--backbone-lr-mult must be >= 0, got {self.backbone_lr_mult}")
        if self.mode in ("finetune", "feature-extract") and not self.weights:
            bad(f"--mode {self.mode} needs --weights (torchvision or a file)")
        if self.patience is not None and self.patience < 1:
            bad(f"--patience must be at least 1, got {self.patience}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            bad(f"--warmup-epochs must be between 0 and --epochs, got {self.warmup_epochs}")
        if any(e < 1 for e in self.unfreeze_schedule):
            bad(f"--unfreeze-schedule epochs must be >= 1, got {self.unfreeze_schedule}")
        super().check()

    @property
    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "finetune" if self.weights else "scratch"


# He et al. 2016 sec. 4.2 trains 64k iterations with lr /10 at 32k and 48k (50 % and 75 %),
# SGD momentum 0.9, weight decay 1e-4 on every parameter, batch 128, lr 0.1.
RECIPES: dict[str, dict] = {
    "paper-cifar": dict(
        optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
        decay_norm_and_bias=True, batch_size=128, schedule="multistep", milestones=[0.5, 0.75],
        gamma=0.1, warmup_epochs=0.0, label_smoothing=0.0,
    ),
    # Transfer learning: lower lr, short warmup, backbone at a tenth of the head's lr, smoothing.
    "finetune": dict(
        optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
        schedule="cosine", warmup_epochs=1.0, label_smoothing=0.1, backbone_lr_mult=0.1,
        epochs=10, batch_size=32,
    ),
}  # fmt: skip


def _known(d: dict, source: str) -> dict:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        import difflib

        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(names), n=1)
            hints.append(f"{k}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError(f"{source}: unknown setting(s): {', '.join(hints)}")
    return d


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {p}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config {p}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {p}: expected a mapping of settings, got {type(data).__name__}"
        )
    data = {k.replace("-", "_"): v for k, v in data.items()}
    return _known(data, f"--config {p}")


def resolve_config(
    overrides: dict | None = None, config_file: str | None = None, recipe: str | None = None
) -> TrainConfig:
    """Defaults < recipe < config file < overrides (flags actually given)."""
    merged: dict = {}
    file_values = load_yaml(config_file) if config_file else {}
    overrides = _known(dict(overrides or {}), "command line")
    recipe = overrides.get("recipe") or file_values.get("recipe") or recipe
    if recipe:
        if recipe not in RECIPES:
            raise ConfigError(f"--recipe {recipe!r} is not one of {', '.join(RECIPES)}")
        merged.update(RECIPES[recipe])
        merged["recipe"] = recipe
    merged.update(file_values)
    merged.update(overrides)
    cfg = TrainConfig(**merged)
    cfg.check()
    return cfg


# What a resumed run may change: its length and how it is run, not what it computes.
# ``max_steps`` belongs to one invocation (stop after N steps), so a bare --resume drops it.
RESUME_MAY_CHANGE = ("epochs", "max_steps", "patience", "checkpoint_every", "num_workers",
                     "tensorboard", "compile")  # fmt: skip
# Taken from the folder being resumed, never compared.
_RUN_PLACE = ("out", "name")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def explicit_settings(cfg: TrainConfig) -> dict:
    """The settings of ``cfg`` that differ from the defaults: what a caller asked for."""
    default = TrainConfig()
    return {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)
            if getattr(cfg, f.name) != getattr(default, f.name)}  # fmt: skip


def resume_config(saved: dict, given: dict, epochs_done: int, run: str | Path) -> TrainConfig:
    """The configuration of a resumed run: every saved setting, except those in
    ``RESUME_MAY_CHANGE`` that ``given`` names. Any other given setting that differs from the
    saved one is refused in one line, so a flag is never silently ignored."""
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in saved.items() if k in names}
    refused = [
        f"{_flag(k)} {v!r} (the run has {values.get(k)!r})"
        for k, v in given.items()
        if k not in RESUME_MAY_CHANGE + _RUN_PLACE and k in names and v != values.get(k)
    ]
    if refused:
        may = ", ".join(_flag(k) for k in RESUME_MAY_CHANGE)
        raise ConfigError(
            f"--resume continues {run} with its saved settings; {'; '.join(refused)} cannot "
            f"change (a resumed run may change only {may}). For other settings start a new "
            f"run: resnetlab train --config {Path(run) / 'config.yaml'} --name NEW ..."
        )
    values.update({k: v for k, v in given.items() if k in RESUME_MAY_CHANGE})
    if "max_steps" not in given:
        values["max_steps"] = None
    cfg = TrainConfig(**values)
    if cfg.epochs < epochs_done:
        raise ConfigError(
            f"--epochs {cfg.epochs}: {run} has already completed {epochs_done} epochs; "
            f"give more than {epochs_done} to train further"
        )
    cfg.check()
    return cfg


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
