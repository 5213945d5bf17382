"""Training configuration: one dataclass, recipes, YAML in and out.

Precedence, lowest first: the defaults here < ``--recipe`` < ``--config FILE.yaml`` < flags
given on the command line. The resolved result is saved as ``config.yaml`` in the run folder
and ``resnetlab train --config RUN/config.yaml`` re-runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from ..artifacts.run import RunDir
from ..core.device import PRECISIONS
from ..core.errors import ConfigError
from ..core.fmt import shell_command
from ..core.options import check_types, flag_name, option
from ..data import DataConfig

MODES = ("auto", "scratch", "finetune", "feature-extract")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "multistep", "onecycle", "constant")

# He et al. 2016 sec. 4.2 trains 64k iterations with lr /10 at 32k and 48k (50 % and 75 %),
# SGD momentum 0.9, weight decay 1e-4 on every parameter, batch 128, lr 0.1.
RECIPES: dict[str, dict] = {
    "paper-cifar": dict(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        decay_norm_and_bias=True,
        batch_size=128,
        schedule="multistep",
        milestones=[0.5, 0.75],
        gamma=0.1,
        warmup_epochs=0.0,
        label_smoothing=0.0,
    ),
    # The defaults as they are (SGD + nesterov, lr 0.1 per 256 images, cosine, label smoothing):
    # for training from scratch, and to opt out of the automatic "finetune" below.
    "scratch": {},
    # Transfer learning, chosen automatically for --weights in finetune mode (flags still win).
    # AdamW at 1e-3 adapts the pretrained layers fastest: ResNet-34 from digits 0-4 to 5-9,
    # 8 epochs (benchmarks/time_to_accuracy.py): 94 % test top-1 after 4 epochs and 97-98 %
    # at the end, against 88 % / 93-94 % for SGD lr 0.01 and 77 % at the end for the scratch
    # defaults (lr 0.05 then), which wreck the pretrained features. Batch 32: twice the steps
    # of an epoch at 64, for ~20 % more time: 4 epochs ended at 98 % instead of 88 %.
    "finetune": dict(
        optimizer="adamw",
        lr=1e-3,
        batch_size=32,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.1,
    ),
    # ImageNet ResNet-50 (docs/scale.md), Goyal et al. 2017: lr 0.1 x global batch / 256, set for
    # 8 GPUs x 256 = 2,048; 5 warmup epochs; /10 at 30, 60, 80; zero-gamma; 6 workers per GPU.
    "imagenet": dict(
        model="resnet50",
        model_kwargs={"zero_init_residual": True},
        input_size=224,
        preset="imagenet",
        epochs=90,
        batch_size=256,
        optimizer="sgd",
        lr=0.8,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        decay_norm_and_bias=False,
        schedule="multistep",
        milestones=[30, 60, 80],
        gamma=0.1,
        warmup_epochs=5.0,
        label_smoothing=0.0,
        num_workers=6,
        checkpoint_every=200,
    ),
}


@dataclass
class TrainConfig(DataConfig):
    """Every setting of a run: the data settings (inherited from ``DataConfig``), model,
    recipe and system, flat so that flags and YAML keys map one to one."""

    # model
    model: str = option("resnet20", "a name from `resnetlab models`", group="model")
    model_kwargs: dict = option(
        factory=dict,
        help="e.g. shortcut=B zero_init_residual=true",
        metavar="KEY=VALUE",
        group="model",
    )
    weights: str | None = option(None, "torchvision, or a .pth/.safetensors file", group="model")
    mode: str = option(
        "auto", "auto: scratch without --weights, finetune with", choices=MODES, group="model"
    )
    backbone_lr_mult: float = option(1.0, "backbone lr as a fraction of the head's", group="model")
    unfreeze_schedule: list[int] = option(
        factory=list,
        help="epochs at which one more stage unfreezes, from the top",
        metavar="EPOCH",
        group="model",
    )
    feature_cache: bool = option(
        True,
        "feature-extract: run the frozen backbone once per image and train the head on "
        "its features",
        group="model",
    )
    feature_views: int = option(
        0,
        "feature cache: 0 = the images unaugmented (as evaluated); N = N augmented views "
        "per image, epoch e trains on view e mod N",
        metavar="N",
        group="model",
    )
    # recipe
    recipe: str | None = option(None, "a named recipe", choices=tuple(RECIPES), group="recipe")
    epochs: int = option(20, "", group="recipe")
    batch_size: int = option(64, "images per optimizer step (per process)", group="recipe")
    accum_steps: int = option(
        1,
        "split each batch into N micro-batches whose gradients add "
        "up (same update, 1/N of the memory)",
        metavar="N",
        group="recipe",
    )
    optimizer: str = option("sgd", "", choices=OPTIMIZERS, group="recipe")
    lr: float | None = option(
        None,
        "peak learning rate (default: 0.1 x batch / 256, the batch summed over processes: "
        "linear scaling, Goyal et al. 2017; 0.025 at batch 64)",
        group="recipe",
    )
    momentum: float = option(0.9, "", group="recipe")
    nesterov: bool = option(True, "", group="recipe")
    weight_decay: float = option(5e-4, "", group="recipe")
    decay_norm_and_bias: bool = option(
        False, "weight decay on norms and biases too", group="recipe"
    )
    schedule: str = option("cosine", "", choices=SCHEDULES, group="recipe")
    warmup_epochs: float = option(1.0, "linear warmup", group="recipe")
    milestones: list[float] = option(
        factory=lambda: [0.5, 0.75],
        help="multistep: epochs, or fractions of the run below 1",
        group="recipe",
    )
    gamma: float = option(0.1, "multistep: lr factor at each milestone", group="recipe")
    label_smoothing: float = option(0.1, "", group="recipe")
    mixup: float = option(0.0, "Beta alpha, e.g. 0.2", group="recipe")
    cutmix: float = option(0.0, "Beta alpha, e.g. 1.0", group="recipe")
    class_weights: str = option(
        "none",
        "per-class loss weights: auto (inverse frequency), effective[:BETA] (effective "
        "number of samples), none, or a JSON/YAML FILE",
        metavar="auto|none|FILE",
        group="recipe",
    )
    sampler: str = option(
        "none",
        "balanced: every class equally likely in a batch",
        choices=("none", "balanced"),
        group="recipe",
    )
    ema_decay: float = option(0.0, "weights EMA, e.g. 0.999", group="recipe")
    clip_grad: float | None = option(None, "max gradient norm", group="recipe")
    patience: int | None = option(None, "early stopping (epochs)", group="recipe")
    progressive: bool = option(
        False,
        "progressive resizing: early epochs at lower resolution, the last ones at --input-size",
        group="recipe",
    )
    precise_bn: bool = option(
        True,
        "after each epoch, measure the BatchNorm statistics again with its final weights "
        "on 512 training images (short runs evaluate far better)",
        group="recipe",
    )
    time_budget: float | None = option(
        None,
        "minutes: set --epochs from a measured step time so the schedule ends, fully "
        "annealed, within them",
        metavar="MIN",
        group="recipe",
    )
    swa_epochs: int = option(
        0,
        "stochastic weight averaging (Izmailov et al. 2018) over the last N epochs: the run's "
        "model is the average, its BatchNorm statistics measured again on the training images",
        metavar="N",
        group="recipe",
    )
    swa_lr: float | None = option(
        None,
        "the constant learning rate of the averaged epochs (default: the schedule's own at "
        "the first of them, held)",
        group="recipe",
    )
    # distillation
    teacher: str | None = option(
        None,
        "distil from this model (Hinton et al. 2015): a run folder or model file; with "
        "--teacher-model: torchvision[:TAG], hf-hub:ORG/NAME or a weights FILE",
        metavar="SOURCE",
        group="distillation",
    )
    teacher_model: str | None = option(
        None,
        "the teacher's architecture, for weights that "
        "carry none (torchvision, hf-hub, a plain file)",
        group="distillation",
    )
    kd_temperature: float = option(
        4.0, "softmax temperature of the soft targets", group="distillation"
    )
    kd_weight: float = option(
        0.9, "weight of the soft-target loss (the labels' loss gets 1 - it)", group="distillation"
    )
    # system
    precision: str = option(
        "auto",
        "auto: bf16 where the CPU has it natively, AMP on CUDA",
        choices=PRECISIONS,
        group="system",
    )
    device: str = option(
        "auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps", group="system"
    )
    channels_last: bool = option(True, "", group="system")
    compile: bool = option(False, "torch.compile the model", group="system")
    seed: int = option(0, "", group="system")
    deterministic: bool = option(False, "deterministic kernels (bit-exact resume)", group="system")
    sync_bn: bool = option(False, "SyncBatchNorm under DDP on CUDA", group="system")
    checkpoint_every: int = option(
        0, "steps between mid-epoch checkpoints; 0: per epoch", group="system"
    )
    max_steps: int | None = option(None, "stop resumably after N steps", group="system")
    out: str = option("runs", "parent folder of run folders", group="system")
    name: str | None = option(None, "run folder name (default: model-data-time)", group="system")
    tensorboard: bool = option(False, "TensorBoard event files in the run folder", group="system")
    tracker: str = option(
        "none",
        "log params, metrics and the model to an experiment tracker (needs "
        "'resnetlab[tracking]'); a resumed run continues its tracker run",
        choices=("none", "mlflow", "wandb"),
        group="system",
    )
    tracker_uri: str | None = option(
        None,
        "mlflow: the tracking server (default: $MLFLOW_TRACKING_URI, else mlflow's "
        "own); wandb: the server's base URL (default: $WANDB_BASE_URL)",
        metavar="URI",
        group="system",
    )
    tracker_project: str | None = option(
        None,
        "mlflow experiment / wandb project (default: resnetlab, or $WANDB_PROJECT)",
        metavar="NAME",
        group="system",
    )

    def data_config(self) -> DataConfig:
        return DataConfig(**{f.name: getattr(self, f.name) for f in fields(DataConfig)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        def bad(msg):
            raise ConfigError(msg)

        # A value of the wrong type (TrainConfig(lr="fast")) is named, not a TypeError below.
        check_types(type(self), {f.name: getattr(self, f.name) for f in fields(self)})
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
        if self.lr is not None and not self.lr > 0:
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
        if self.batch_size < 1:  # before --accum-steps, which is measured against it
            bad(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.accum_steps < 1 or self.accum_steps > self.batch_size:
            bad(f"--accum-steps must be between 1 and --batch-size, got {self.accum_steps}")
        if self.feature_views < 0:
            bad(f"--feature-views must be >= 0, got {self.feature_views}")
        if self.time_budget is not None and not self.time_budget > 0:
            bad(f"--time-budget must be a positive number of minutes, got {self.time_budget}")
        if any(e < 1 for e in self.unfreeze_schedule):
            bad(f"--unfreeze-schedule epochs must be >= 1, got {self.unfreeze_schedule}")
        if not 0 <= self.swa_epochs <= self.epochs:
            bad(f"--swa-epochs must be between 0 and --epochs, got {self.swa_epochs}")
        if self.swa_lr is not None and not self.swa_lr > 0:
            bad(f"--swa-lr must be positive, got {self.swa_lr}")
        if self.swa_epochs and self.ema_decay:
            bad("--swa-epochs and --ema-decay both average the weights; use one of them")
        if not self.kd_temperature > 0:
            bad(f"--kd-temperature must be positive, got {self.kd_temperature}")
        if not 0 <= self.kd_weight <= 1:
            bad(f"--kd-weight must be in [0, 1], got {self.kd_weight}")
        super().check()

    @property
    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "finetune" if self.weights else "scratch"


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


def parse_kwargs(items: list[str] | dict) -> dict:
    """``--model-kwargs key=value ...``: values parsed as YAML (numbers, booleans, lists)."""
    if isinstance(items, dict):
        return items
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-kwargs {item!r} is not key=value")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


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


def auto_recipe(settings: dict) -> str | None:
    """The recipe a run gets when it names none: "finetune" for pretrained weights that train
    whole (--weights, mode auto or finetune); feature extraction and scratch runs keep the
    defaults."""
    mode = settings.get("mode", "auto")
    return "finetune" if settings.get("weights") and mode in ("auto", "finetune") else None


def resolve_config(
    overrides: dict | None = None, config_file: str | None = None, recipe: str | None = None
) -> TrainConfig:
    """Defaults < recipe < config file < overrides (flags actually given)."""
    merged: dict = {}
    file_values = check_types(TrainConfig, load_yaml(config_file) if config_file else {})
    # A value of the wrong type (lr="fast") is one ConfigError naming the setting.
    overrides = check_types(TrainConfig, _known(dict(overrides or {}), "command line"))
    if "model_kwargs" in overrides:
        overrides["model_kwargs"] = parse_kwargs(overrides["model_kwargs"])
    recipe = overrides.get("recipe") or file_values.get("recipe") or recipe
    if not recipe:
        recipe = auto_recipe({**file_values, **overrides})
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
RESUME_MAY_CHANGE = (
    "epochs",
    "max_steps",
    "patience",
    "checkpoint_every",
    "num_workers",
    "tensorboard",
    "compile",
    "device",
    "tracker",
    "tracker_uri",
    "tracker_project",
)
# Settings added later, with the value that reproduces runs saved before they existed.
_BEFORE = {"precise_bn": False}
# Taken from the folder being resumed, never compared.
_RUN_PLACE = ("out", "name")


def explicit_settings(cfg: TrainConfig) -> dict:
    """The settings of ``cfg`` that differ from the defaults: what a caller asked for."""
    default = TrainConfig()
    return {
        f.name: getattr(cfg, f.name)
        for f in fields(TrainConfig)
        if getattr(cfg, f.name) != getattr(default, f.name)
    }


def resume_config(saved: dict, given: dict, epochs_done: int, run: str | Path) -> TrainConfig:
    """The configuration of a resumed run: every saved setting, except those in
    ``RESUME_MAY_CHANGE`` that ``given`` names. Any other given setting that differs from the
    saved one is refused in one line, so a flag is never silently ignored."""
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in saved.items() if k in names}
    # Runs saved before a setting existed continue as they were trained.
    values.update({k: v for k, v in _BEFORE.items() if k not in saved})
    given = dict(given)
    if "model_kwargs" in given:
        given["model_kwargs"] = parse_kwargs(given["model_kwargs"])
    refused = [
        f"{flag_name(k)} {v!r} (the run has {values.get(k)!r})"
        for k, v in given.items()
        if k not in RESUME_MAY_CHANGE + _RUN_PLACE and k in names and v != values.get(k)
    ]
    if refused:
        may = ", ".join(flag_name(k) for k in RESUME_MAY_CHANGE)
        raise ConfigError(
            f"--resume continues {run} with its saved settings; {'; '.join(refused)} cannot "
            f"change (a resumed run may change only {may}). For other settings start a new "
            "run: "
            + shell_command("resnetlab", "train", "--config", RunDir(run).config, "--name", "NEW")
            + " ..."
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
