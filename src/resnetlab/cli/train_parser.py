"""The flags of the commands that train: ``train`` (generated from ``TrainConfig``'s fields),
``experiment`` and ``tune``."""

from __future__ import annotations

from ..core.device import PRECISIONS
from ..core.options import add_options
from .flags import _args


def add_experiment_parsers(sub, device: tuple) -> None:
    """``experiment`` and ``tune``; ``--device`` as the main parser declares it."""
    _args(
        sub.add_parser("experiment", help="experiments; `degradation`: plain vs residual"),
        ("name", {"choices": ["degradation"]}),
        ("--data", {"default": "digits"}),
        ("--depths", {"type": int, "nargs": "+", "default": [20, 56]}),
        ("--epochs", {"type": int, "default": 12}),
        ("--seeds", {"type": int, "default": 1, "help": "runs per net; reports mean ± std"}),
        ("--recipe", {"help": "e.g. paper-cifar"}),
        ("--batch-size", {"type": int}),
        ("--lr", {"type": float}),
        ("--precision", {"choices": PRECISIONS}),
        device,
        ("--out", {"help": "output folder (default runs/degradation-TIME)"}),
    )
    _args(
        sub.add_parser("tune", help="hyper-parameter search (Optuna), resumable"),
        ("--data", {"help": "DATA (default digits; a continued study keeps its own)"}),
        ("--model", {"help": "default resnet20; a continued study keeps its own"}),
        ("--epochs", {"type": int, "help": "per trial (default 8; a continued study: its own)"}),
        ("--trials", {"type": int, "default": 10, "help": "finished trials wanted in total"}),
        ("--timeout", {"type": float, "help": "seconds for this invocation"}),
        ("--storage", {"help": "Optuna storage URL (default sqlite:///OUT/study.db)"}),
        ("--out", {"default": "runs/tune"}),
        ("--config", {"help": "base settings YAML"}),
        (
            "--device",
            {
                "help": "auto (CUDA, MPS, CPU), cpu, cuda[:N], mps (default auto; a "
                "continued study: its own)"
            },
        ),
        ("--seed", {"type": int, "default": 0}),
    )


def add_train_parser(sub) -> None:
    from ..train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model; writes a run folder",
        description="Train from scratch, fine-tune or feature-extract. Flags override "
        "--config FILE.yaml, which overrides --recipe, which overrides the defaults.",
    )
    add_options(p, TrainConfig)
    run = p.add_argument_group("run")
    _args(
        run,
        ("--config", {"help": "YAML file of settings (e.g. a run's config.yaml)"}),
        ("--resume", {"help": "run folder or checkpoint to continue"}),
        ("--lr-find", {"action": "store_true", "help": "run an LR range test and stop"}),
        (
            "--folds",
            {
                "type": int,
                "metavar": "K",
                "help": "k-fold cross-validation: K "
                "stratified runs under OUT/NAME; the same command resumes",
            },
        ),
        ("--quiet", {"action": "store_true", "help": "no progress output"}),
    )
