"""The `resnetlab` argument parser: each sub-command's flags as a table; train's generated
from its configuration dataclasses (help, choices and groups live on the fields)."""

from __future__ import annotations

import argparse

from ..core.device import PRECISIONS
from ..core.options import add_options
from .flags import _args
from .serve_parser import add_serve_parser
from .train_parser import add_experiment_parsers, add_train_parser


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..data import DataConfig

    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Residual networks for image classification: build, inspect, train.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    json_flag = ("--json", {"action": "store_true", "help": "machine-readable output"})
    from ..inference.backends import BACKENDS
    from ..models.registry import list_families

    precision = ("--precision", {"default": "auto", "choices": PRECISIONS})
    backend = (
        "--backend",
        {
            "choices": ["auto", *BACKENDS],
            "default": "auto",
            "help": "auto: the fastest backend measured here whose outputs "
            "agree with PyTorch fp32 (measured once per machine, cached)",
        },
    )
    device = ("--device", {"default": "auto", "help": "auto (CUDA, MPS, CPU), cpu, cuda[:N], mps"})
    run = ("run", {"help": "run folder, model.safetensors or checkpoint"})
    data = ("--data", {"help": "DATA to evaluate on (default: the run's own)"})
    tta = (
        "--tta",
        {
            "choices": ["none", "flip", "crops", "flip-crops"],
            "default": "none",
            "help": "test-time augmentation: logits averaged over 2 (flip), 5 (crops: "
            "shifted to the corners, for images that are not left-right symmetric) or "
            "10 (flip-crops) views, then calibrated; x2 / x5 / x10 the model's time",
        },
    )

    _args(
        sub.add_parser("models", help="list registered models with params and MACs"),
        ("pattern", {"nargs": "?", "default": "*", "help": "shell pattern, e.g. 'resnet*'"}),
        (
            "--family",
            {"choices": list_families(), "help": "only this family: a data set or an architecture"},
        ),
        ("--paper", {"action": "store_true", "help": "show the papers' CIFAR figures"}),
        (
            "--weights",
            {
                "action": "store_true",
                "help": "the published weights of each model, top-1, preprocessing",
            },
        ),
        json_flag,
    )
    _args(
        sub.add_parser("summary", help="per-layer table, parameters, MACs and FLOPs"),
        ("model", {}),
        ("--input-size", {"type": int, "nargs": 3, "metavar": ("C", "H", "W")}),
        ("--in-chans", {"type": int, "help": "input channels (1 for grayscale)"}),
        ("--num-classes", {"type": int, "help": "classifier outputs (default: family's)"}),
        ("--depth", {"type": int, "default": 2, "help": "levels of nesting shown"}),
        (
            "--v1",
            {
                "action": "store_true",
                "help": "bottleneck models as the paper built them "
                "(stride on the first 1x1 conv; default v1.5, torchvision's): Table 1's "
                "3.8 / 7.6 / 11.3 G multiply-adds",
            },
        ),
    )
    p = _args(
        sub.add_parser("stats", help="data set doctor: counts, sizes, bad files, mean/std"),
        ("data", {"help": "digits, a folder, mnist:DIR, cifar10:DIR, cifar100:DIR, ..."}),
        ("--seed", {"type": int, "default": 0}),
        json_flag,
    )
    add_options(
        p,
        DataConfig,
        only=("val_ratio", "test_ratio", "in_chans", "download", "task", "input_size"),
        suppress=False,
    )
    p = _args(
        sub.add_parser(
            "audit",
            help="duplicates, leaks across splits and likely wrong "
            "labels, with a page of thumbnails; changes nothing",
        ),
        ("data", {"help": "digits, a folder, csv:FILE, jsonl:FILE, mnist:DIR, cifar10:DIR"}),
        (
            "--labels",
            {
                "action": "store_true",
                "help": "also rank images whose label is "
                "likely wrong (confident learning on out-of-fold probabilities)",
            },
        ),
        (
            "--run",
            {
                "metavar": "RUN",
                "help": "--labels: cross-validate a linear model on "
                "this trained model's features (default: on the pixels)",
            },
        ),
        (
            "--oof",
            {
                "metavar": "FILE",
                "help": "--labels from these out-of-fold "
                "probabilities: the oof.csv of train --folds K",
            },
        ),
        (
            "--folds",
            {
                "type": int,
                "default": 5,
                "metavar": "K",
                "help": "--labels: cross-validation folds of the linear model",
            },
        ),
        ("--exact-only", {"action": "store_true", "help": "no near duplicates (pHash)"}),
        ("--html", {"metavar": "FILE", "help": "write the page of thumbnails here"}),
        (
            "--write-exclude",
            {
                "metavar": "FILE",
                "help": "write the copies to leave out, for train --exclude FILE (a new file)",
            },
        ),
        (
            "--write-relabel",
            {
                "metavar": "FILE",
                "help": "write a CSV of suggested labels "
                "to check and edit, for train --relabel FILE (a new file)",
            },
        ),
        ("--seed", {"type": int, "default": 0, "help": "as train's: the same splits"}),
        json_flag,
    )
    add_options(
        p,
        DataConfig,
        only=("val_ratio", "test_ratio", "in_chans", "download", "task"),
        suppress=False,
    )
    p = _args(
        sub.add_parser(
            "shard", help="WebDataset tar shards from any DATA, classes and splits kept"
        ),
        ("data", {"help": "digits, a folder, mnist:DIR, cifar10:DIR, ..., csv:FILE"}),
        ("out", {"help": "a new or empty folder for the shards and index.json"}),
        (
            "--shard-size",
            {
                "default": "1GB",
                "metavar": "SIZE",
                "help": "bytes per shard at most: 1GB, 500MB (powers of 1024)",
            },
        ),
        (
            "--seed",
            {
                "type": int,
                "default": 0,
                "help": "splits a single folder; orders the training samples",
            },
        ),
    )
    add_options(
        p,
        DataConfig,
        only=("val_ratio", "test_ratio", "in_chans", "download", "max_bad_fraction"),
        suppress=False,
    )
    add_train_parser(sub)
    _args(
        sub.add_parser("evaluate", help="top-1/top-5, per-class metrics, confusion matrix"),
        run,
        data,
        ("--split", {"choices": ["train", "val", "test"], "help": "default: test, else val"}),
        ("--batch-size", {"type": int, "default": 64}),
        ("--tta", {"action": "store_true", "help": "average with the horizontally flipped"}),
        (
            "--top-losses",
            {
                "type": int,
                "default": 0,
                "metavar": "N",
                "help": "gallery PNG of the N most confidently wrong images",
            },
        ),
        backend,
        precision,
        device,
        (
            "--max-bad-fraction",
            {"type": float, "help": "unreadable files tolerated (default: the run's)"},
        ),
        (
            "--out",
            {
                "metavar": "DIR",
                "help": "folder for the metrics and plots (default: RUN/eval-SPLIT)",
            },
        ),
        ("--json", {"action": "store_true"}),
    )
    p = _args(
        sub.add_parser("predict", help="top-k labels for images, folders or globs"),
        ("run", {"nargs": "?", "help": "run folder or model file (omit with --model)"}),
        ("inputs", {"nargs": "*", "help": "image files, folders, globs"}),
        (
            "--topk",
            {
                "type": int,
                "default": None,
                "help": "classes per image (default 5; more than the classes: all of "
                "them; a multi-label model: every label above its threshold)",
            },
        ),
        ("--batch-size", {"type": int, "default": 32}),
        (
            "--streams",
            {
                "type": int,
                "help": "batches run side by side on the CPU, each "
                "with its share of the threads (default: one per thread, at most 4)",
            },
        ),
        backend,
        precision,
        device,
        ("--model", {"help": "with --weights: predict without a run folder"}),
        ("--weights", {"help": "torchvision, or a .pth/.safetensors file"}),
        tta,
    )
    out = p.add_mutually_exclusive_group()
    _args(
        out,
        (
            "--json",
            {
                "nargs": "?",
                "const": "-",
                "metavar": "FILE",
                "help": "rows as JSON, to FILE (default: standard output)",
            },
        ),
        (
            "--csv",
            {
                "nargs": "?",
                "const": "-",
                "metavar": "FILE",
                "help": "rows as CSV, to FILE (default: standard output); either is "
                "written as each batch is done",
            },
        ),
    )
    _args(
        sub.add_parser("export", help="ONNX or TorchScript file, optionally verified"),
        ("run", {}),
        (
            "--format",
            {
                "choices": ["onnx", "torchscript", "hub", "openvino"],
                "default": "onnx",
                "help": "hub: a folder for the Hugging Face hub and timm (config.json, "
                "model.safetensors, the model card README.md); openvino: an OpenVINO "
                "IR (RUN/model.xml + .bin) with the preprocessing in its runtime info",
            },
        ),
        (
            "--out",
            {
                "help": "file to write (default: RUN/model.onnx or RUN/model.ts; hub: "
                "the folder, default RUN/hub)"
            },
        ),
        ("--verify", {"action": "store_true", "help": "compare outputs with PyTorch"}),
        (
            "--int8",
            {
                "action": "store_true",
                "help": "also write model.int8.onnx (static int8) and measure its accuracy change",
            },
        ),
        (
            "--calibration",
            {
                "type": int,
                "default": 64,
                "metavar": "N",
                "help": "training images that calibrate the int8 ranges",
            },
        ),
        ("--data", {"help": "images for --int8 when the model has no run folder"}),
    )
    add_experiment_parsers(sub, device)
    add_serve_parser(sub, backend, device, tta)
    _args(
        sub.add_parser("explain", help="Grad-CAM overlays (PNG): where the model looked"),
        run,
        ("inputs", {"nargs": "+", "help": "image files, folders, globs"}),
        (
            "--class",
            {
                "dest": "class_name",
                "metavar": "NAME",
                "help": "explain this class (default: each image's predicted class)",
            },
        ),
        ("--out", {"help": "folder for the overlays (default: RUN/gradcam)"}),
        device,
        json_flag,
    )
    _args(
        sub.add_parser(
            "average",
            help="uniform average of compatible runs or checkpoints (a "
            "model soup), saved as a run folder",
        ),
        (
            "runs",
            {
                "nargs": "+",
                "metavar": "RUN",
                "help": "run folders, model files or checkpoints (two or more)",
            },
        ),
        ("--out", {"required": True, "metavar": "RUN2", "help": "a new run folder"}),
        (
            "--bn",
            {
                "choices": ["auto", "recompute", "average"],
                "default": "auto",
                "help": "BatchNorm statistics: measured again on the training images "
                "(recompute), or the members' mean (average); auto: recompute when the "
                "training data is known",
            },
        ),
        ("--data", {"help": "training DATA for --bn recompute (default: the first run's)"}),
        (
            "--batch-size",
            {"type": int, "help": "batches of the BatchNorm pass (default: the first run's)"},
        ),
        device,
        json_flag,
    )
    _args(
        sub.add_parser(
            "convert",
            help="MindSpore .ckpt / Keras .h5/.keras weights to "
            "torchvision-layout safetensors (no foreign code run)",
        ),
        ("file", {}),
        ("--model", {"required": True, "help": "e.g. resnet50"}),
        ("--out", {"required": True, "help": "W.safetensors to write"}),
    )
    _args(
        sub.add_parser("report", help="RUN/report.html: curves, confusion matrix, examples"),
        ("run", {}),
        data,
        ("--top-losses", {"type": int, "default": 12}),
        (
            "--out",
            {
                "metavar": "DIR",
                "help": "folder for report.html and its figures (default: the run folder)",
            },
        ),
    )
    _args(
        sub.add_parser(
            "push", help="upload the run's hub folder (export --format hub) to the Hugging Face hub"
        ),
        ("run", {}),
        (
            "repo_id",
            {
                "metavar": "ORG/NAME",
                "help": "the model repository (created when it does not exist)",
            },
        ),
        ("--private", {"action": "store_true", "help": "a new repository is private"}),
        ("--token", {"help": "hub token (default: HF_TOKEN or the one `hf auth login` saved)"}),
        ("--message", {"help": "commit message"}),
    )
    p = _args(
        sub.add_parser(
            "runs", help="every run in a folder as one table: scores, calibration, time, state"
        ),
        (
            "folder",
            {
                "nargs": "?",
                "default": "runs",
                "metavar": "DIR",
                "help": "folder of run folders, searched a few levels down (default: runs)",
            },
        ),
        (
            "--sort",
            {
                "default": "date",
                "metavar": "COLUMN",
                "help": "name, model, data, task, epochs, best_val, test, "
                "calibration, time, date, state or a setting (lr, ...); "
                "--sort=-test: highest first (default: date)",
            },
        ),
        ("--reverse", {"action": "store_true", "help": "the other way round"}),
        (
            "--filter",
            {
                "action": "append",
                "default": [],
                "metavar": "KEY<OP>VALUE",
                "help": "keep the runs where it holds; OP = != < <= > >= or ~ "
                "(contains): state=finished, test>0.9, model=resnet*, "
                "optimizer=adamw; repeatable (all must hold)",
            },
        ),
    )
    out = p.add_mutually_exclusive_group()
    _args(out, ("--json", {"action": "store_true"}), ("--csv", {"action": "store_true"}))
    _args(
        sub.add_parser(
            "compare",
            help="runs side by side: settings that differ, metrics, "
            "curves, per-class differences (terminal and HTML)",
        ),
        ("runs", {"nargs": "+", "metavar": "RUN", "help": "two or more run folders"}),
        (
            "--split",
            {
                "choices": ["train", "val", "test"],
                "help": "per-class numbers on this split (default: test where every "
                "run has one, else val)",
            },
        ),
        ("--html", {"metavar": "FILE", "help": "also write one self-contained HTML page"}),
        (
            "--no-evaluate",
            {
                "action": "store_true",
                "help": "per-class numbers only from the runs' saved evaluations "
                "(eval-SPLIT/metrics.json); evaluate none now",
            },
        ),
        device,
        json_flag,
    )
    return parser
