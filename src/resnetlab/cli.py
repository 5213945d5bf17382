"""`resnetlab` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from .errors import ConfigError, ResnetlabError
from .fmt import ljust, pct, table, width
from .runtime import tune_allocator

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from .models import get_model_entry, list_models
    from .models.registry import natural_key
    from .summary import human, model_info

    names = sorted(
        list_models(args.pattern, family=args.family),
        key=lambda n: (get_model_entry(n).family != "imagenet", natural_key(n)),
    )
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}; try `resnetlab models` for all")
    rows = [model_info(name) for name in names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["model", "family", "params", "MACs", "input"]
    if args.paper:
        header += ["paper params", "paper C10 err"]
    body = []
    for r in rows:
        cells = [
            r["model"],
            r["family"],
            f"{r['params'] / 1e6:.2f}M",
            human(r["macs"]),
            "x".join(str(v) for v in r["input_size"][1:]),
        ]
        if args.paper:
            p = r["paper"]
            cells += [
                f"{p['params_m']}M" if p else "-",
                f"{p['cifar10_error']:.2f}%" if p else "-",
            ]
        body.append(cells)
    print(table(header, body, right_from=2))
    if args.paper:
        print(
            "\npaper: He et al. 2016 (arXiv:1512.03385), Table 6 - CIFAR-10 test error, "
            "10 classes; option-A shortcuts."
        )
    plural = "s" if len(rows) != 1 else ""
    print(
        f"\n{len(rows)} model{plural}. MACs: multiply-accumulates for one image at the input shown."
    )
    return 0


@command("summary")
def cmd_summary(args: argparse.Namespace) -> int:
    from .models import create_model, get_model_entry
    from .summary import format_summary, summarize

    entry = get_model_entry(args.model)
    in_chans = args.in_chans
    input_size = tuple(args.input_size) if args.input_size else None
    if input_size is None:
        input_size = (in_chans or 3, *entry.input_size[1:])
    elif in_chans is not None and in_chans != input_size[0]:
        raise ConfigError(
            f"--in-chans {in_chans} disagrees with --input-size {input_size[0]} "
            f"{input_size[1]} {input_size[2]}; give one or make them match"
        )
    if min(input_size) < 1:
        raise ConfigError(
            f"--input-size {' '.join(map(str, input_size))}: sizes must be at least 1"
        )
    model = create_model(args.model, num_classes=args.num_classes, in_chans=input_size[0])
    print(format_summary(args.model, summarize(model, input_size, depth=args.depth)))
    if min(input_size[1:]) < entry.total_stride:
        print(
            f"\nnote: {args.model} shrinks its input {entry.total_stride}-fold; at "
            f"{input_size[1]}x{input_size[2]} its last stage works on 1x1 maps"
        )
    return 0


@command("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    import logging

    from .data import dataset_stats, load_source

    logging.getLogger("resnetlab.data").setLevel(logging.ERROR)  # listed below instead
    source = load_source(
        args.data,
        val_ratio=args.val_ratio,
        test_ratio=args.test_ratio,
        seed=args.seed,
        download=args.download,
        channels=args.in_chans,
        max_bad_fraction=1.0,  # the doctor reports every bad file instead of stopping
    )
    report = dataset_stats(source)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 1 if report["bad_files"] else 0
    print(f"data      {report['data']}  ({report['channels']} channel(s))")
    print(f"images    {report['num_images']:,} readable", end="")
    print("  (" + ", ".join(f"{k} {v:,}" for k, v in report["splits"].items()) + ")")
    counts = report["classes"]
    print(f"classes   {len(counts)}  (largest/smallest = {report['imbalance']:.2f})")
    cols = max(map(width, counts)) if counts else 0
    top = max(counts.values()) if counts else 1
    for name, n in counts.items():
        bar = "#" * max(1, round(30 * n / top)) if n else ""
        print(f"  {ljust(name, cols)}  {n:7,}  {bar}")
    sz = report["sizes"]
    print(
        f"sizes     min {sz['min'][0]}x{sz['min'][1]}, median {sz['median'][0]}x"
        f"{sz['median'][1]}, max {sz['max'][0]}x{sz['max'][1]} (h x w)"
    )
    bad = report["bad_files"]
    print(f"unreadable {len(bad)} file(s)" + (":" if bad else ""))
    for b in bad:
        print(f"  {b['path']}: {b['reason']}")
    if report["ignored_files"]:
        print(f"ignored   {report['ignored_files']} non-image file(s)")
    mean = " ".join(f"{v:.4f}" for v in report["mean"])
    std = " ".join(f"{v:.4f}" for v in report["std"])
    print(f"mean      {mean}")
    print(f"std       {std}")
    print(f"suggested: --mean {mean} --std {std}")
    return 1 if bad else 0


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from .train import Trainer, resolve_config

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "config", "resume", "lr_find", "quiet") and v is not None
    }
    if "model_kwargs" in overrides:
        overrides["model_kwargs"] = _parse_kwargs(overrides["model_kwargs"])
    if args.resume and (args.config or args.lr_find):
        flag = "--config" if args.config else "--lr-find"
        raise ConfigError(
            f"--resume continues a run with its saved settings; {flag} cannot join it"
        )
    if args.resume:
        trainer = Trainer(resume=args.resume, verbose=not args.quiet, overrides=overrides)
        return _fit_and_report(trainer, args)
    cfg = resolve_config(overrides, config_file=args.config)
    if args.lr_find:
        from .train.lr_find import lr_find

        result = lr_find(cfg)
        print(f"suggested --lr {result['suggestion']:.3g}  (plot: {result['plot']})")
        return 0
    return _fit_and_report(Trainer(cfg, verbose=not args.quiet), args)


def _fit_and_report(trainer, args: argparse.Namespace) -> int:
    from .train import RunStopped
    from .train.distributed import cleanup

    try:
        try:
            summary = trainer.fit()
        finally:
            cleanup(trainer.dist)
    except RunStopped as exc:
        print(
            f"resnetlab train: {exc}; continue with: resnetlab train --resume {exc.run_dir}",
            file=sys.stderr,
        )
        return 130 if exc.interrupted else 0
    if trainer.dist.enabled:
        print(
            f"rank {trainer.dist.rank}/{trainer.dist.world_size}: final weights sha256 "
            f"{summary['weights_sha256']}",
            flush=True,
        )
    if trainer.dist.is_main and not args.quiet:
        _print_train_summary(summary)
    return 0


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    r = evaluate_run(
        args.run, data=args.data, split=args.split, batch_size=args.batch_size, tta=args.tta,
        top_losses=args.top_losses, precision=args.precision,
        max_bad_fraction=args.max_bad_fraction,
    )  # fmt: skip
    if args.json:
        print(json.dumps(r, indent=2, ensure_ascii=False))
        return 0
    print(f"{r['split']} split of {r['data']}: {r['num_samples']} images" + (
        " (flip TTA)" if r["tta"] else ""))  # fmt: skip
    print(f"top-1 {pct(r['top1'])}   top-5 {pct(r['top5'])}   loss {r['loss']:.4f}\n")
    rows = [
        [name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])]
        for name, m in r["per_class"].items()
    ]
    print(table(["class", "precision", "recall", "F1", "support"], rows, right_from=1))
    print()
    for key, path in r["files"].items():
        print(f"{key.replace('_', ' '):22} {path}")
    return 0


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from .predict import build_predictor, expand_inputs

    run, inputs = args.run, list(args.inputs)
    if args.model:  # no run: every positional is an input
        inputs = ([run] if run else []) + inputs
        run = None
    if run and not args.model and _looks_like_image(run):
        raise ConfigError(
            f"{run} is an image, not a run: give the run folder (or model file) first, "
            f"e.g. resnetlab predict runs/NAME {run}"
        )
    if not inputs:
        raise ConfigError("no input images: resnetlab predict RUN IMAGE_OR_FOLDER_OR_GLOB ...")
    paths = expand_inputs(inputs)
    if not paths:
        raise ConfigError("no input images: give image files, folders or globs")
    predictor = build_predictor(
        run, model=args.model, weights=args.weights, backend=args.backend,
        batch_size=args.batch_size, precision=args.precision, streams=args.streams,
    )  # fmt: skip
    rows = predictor.predict_paths(paths, topk=args.topk)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(["path", "rank", "label", "index", "prob", "error"])
        for r in rows:
            if r["error"]:
                w.writerow([r["path"], "", "", "", "", r["error"]])
            for rank, t in enumerate(r["topk"], start=1):
                w.writerow([r["path"], rank, t["label"], t["index"], f"{t['prob']:.6f}", ""])
    else:
        for r in rows:
            if r["error"]:
                print(f"{r['path']}: ERROR {r['error']}")
                continue
            tops = ", ".join(f"{t['label']} {t['prob']:.1%}" for t in r["topk"])
            print(f"{r['path']}: {tops}")
    bad = sum(1 for r in rows if r["error"])
    if bad:
        print(f"resnetlab predict: {bad} of {len(rows)} file(s) could not be read", file=sys.stderr)
    return 1 if bad else 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from .export import export, real_inputs

    real = real_inputs(args.run) if args.verify else None
    r = export(args.run, fmt=args.format, out=args.out, do_verify=args.verify, real=real,
               int8=args.int8, calibration=args.calibration, data=args.data)  # fmt: skip
    print(f"wrote {r['path']} ({r['bytes'] / 2**20:.1f} MiB, {r['format']})")
    if args.verify:
        for name, diff in r["max_abs_diff"].items():
            print(f"verified {name}: max |difference| {diff:.2e}")
    if args.int8:
        q = r["int8"]
        print(
            f"wrote {q['path']} ({q['bytes'] / 2**20:.1f} MiB, int8; calibrated on "
            f"{q['calibration_images']} {q['calibration_split']} images)\n"
            f"int8 on {q['measured_on']}: top-1 {pct(q['int8_top1'])} vs fp32 "
            f"{pct(q['fp32_top1'])} "
            f"({q['delta_points']:+.2f} points), top-1 agreement {pct(q['top1_agreement'])}"
        )
        print(f"  resnetlab predict {args.run} IMAGES --backend onnx-int8")
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.run, data=args.data, top_losses=args.top_losses)
    print(f"wrote {path}")
    return 0


@command("experiment")
def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments.degradation import run_degradation

    overrides = {}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.lr:
        overrides["lr"] = args.lr
    if args.precision:
        overrides["precision"] = args.precision
    r = run_degradation(
        data=args.data, depths=tuple(args.depths), epochs=args.epochs, seeds=args.seeds,
        out=args.out, recipe=args.recipe, overrides=overrides,
    )  # fmt: skip
    print()
    header = ["model", "depth", "params", "final train err", "final test err", "time (s)"]
    rows = [
        [t["model"], str(t["depth"]), f"{t['params']:,}",
         pct(t["final_train_error"], std=t["final_train_error_std"]),
         pct(t["final_test_error"], std=t["final_test_error_std"]), f"{t['seconds']:.0f}"]
        for t in r["table"]
    ]  # fmt: skip
    print(table(header, rows, right_from=1))
    print()
    print(r["verdict"]["text"])
    print(f"\nfigure {r['figure']}; table and summary beside it")
    return 0


@command("tune")
def cmd_tune(args: argparse.Namespace) -> int:
    from .experiments.tune import run_tune

    # Flags not given stay out: a continued study keeps its saved value (defaults for a new one).
    flags = {"data": args.data, "model": args.model, "epochs": args.epochs}
    base = {k: v for k, v in flags.items() if v is not None}
    if args.config:
        from .train.config import load_yaml

        base = {**load_yaml(args.config), **base}
    r = run_tune(base, trials=args.trials, timeout=args.timeout, out=args.out,
                 storage=args.storage, seed=args.seed)  # fmt: skip
    print(f"best trial {r['best_trial']}: val top-1 {pct(r['best_value'])}")
    for k, v in r["best_params"].items():
        print(f"  {k:16} {v:.4g}" if isinstance(v, float) else f"  {k:16} {v}")
    print(f"trials: {r['trials']}")
    print(f"wrote {r['best_yaml']} (train with: resnetlab train --config {r['best_yaml']})")
    print(f"plot  {r['plot']}")
    return 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.app import serve

    serve(
        args.run, host=args.host, port=args.port, backend=args.backend,
        precision=args.precision, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, max_body_mb=args.max_body_mb, workers=args.workers,
    )  # fmt: skip
    return 0


def _print_train_summary(s: dict) -> None:
    run = s["run_dir"]
    print()
    print(f"best epoch        {s['best_epoch']} of {s['epochs_completed']}")
    print(f"best val top-1    {pct(s['best_val_top1'])}")
    print(f"test top-1        {pct(s['test_top1'])}   (best checkpoint)")
    print(
        f"time              {s['train_seconds']:.1f} s training, "
        f"{s['train_images_per_second']:,.0f} images/s ({s['precision']}, {s['device']})"
    )
    print(f"run folder        {run}")
    print("next:")
    held_out = s["best_val_top1"] is not None or s["test_top1"] is not None
    if held_out:  # both need images the model did not train on
        print(f"  resnetlab evaluate {run}")
    print(f"  resnetlab predict {run} IMAGE_OR_FOLDER")
    if held_out:
        print(f"  resnetlab report {run}")
    print(f"  resnetlab export {run} --format onnx --verify")
    print(f"  resnetlab train --resume {run} --epochs {s['epochs_completed'] + 10}")


def _looks_like_image(path: str) -> bool:
    from .data.images import is_image_file

    return is_image_file(path) and not os.path.isdir(path)


def _parse_kwargs(items: list[str]) -> dict:
    """``key=value`` pairs for the model; values parsed as YAML (numbers, booleans, lists)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-kwargs {item!r} is not key=value")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Residual networks for image classification: build, inspect, train.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("models", help="list registered models with params and MACs")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*'")
    p.add_argument("--family", choices=["imagenet", "cifar"], help="only this family")
    p.add_argument("--paper", action="store_true", help="show the paper's Table 6 figures")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("summary", help="per-layer table, parameters, MACs and FLOPs")
    p.add_argument("model")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--in-chans", type=int, help="input channels (1 for grayscale)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: family's)")
    p.add_argument("--depth", type=int, default=2, help="levels of nesting shown (default 2)")

    p = sub.add_parser("stats", help="data set doctor: counts, sizes, bad files, mean/std")
    p.add_argument("data", help="digits, a folder, mnist:DIR, cifar10:DIR, cifar100:DIR, csv:FILE")
    _add_split_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    _add_train_parser(sub)

    p = sub.add_parser("evaluate", help="top-1/top-5, per-class metrics, confusion matrix")
    p.add_argument("run", help="run folder, model.safetensors or checkpoint")
    p.add_argument("--data", help="DATA to evaluate on (default: the run's own)")
    p.add_argument("--split", choices=["train", "val", "test"], help="default: test, else val")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped")
    p.add_argument("--top-losses", type=int, default=0, metavar="N",
                   help="gallery PNG of the N most confidently wrong images")  # fmt: skip
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument(
        "--max-bad-fraction", type=float, help="unreadable files tolerated (default: the run's)"
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="top-k labels for images, folders or globs")
    p.add_argument("run", nargs="?", help="run folder or model file (omit with --model)")
    p.add_argument("inputs", nargs="*", help="image files, folders, globs")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--streams", type=int,
        help="batches run side by side on the CPU, each with its share of the threads "
        "(default: one per thread, at most 4)",
    )  # fmt: skip
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--model", help="with --weights: predict without a run folder")
    p.add_argument("--weights", help="torchvision, or a .pth/.safetensors file")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")

    p = sub.add_parser("export", help="ONNX or TorchScript file, optionally verified")
    p.add_argument("run")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", help="file to write (default: RUN/model.onnx or RUN/model.ts)")
    p.add_argument("--verify", action="store_true", help="compare outputs with PyTorch")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write model.int8.onnx (static int8) and measure its accuracy change",
    )
    p.add_argument(
        "--calibration",
        type=int,
        default=64,
        metavar="N",
        help="training images that calibrate the int8 ranges (default 64)",
    )
    p.add_argument("--data", help="images for --int8 when the model has no run folder")

    p = sub.add_parser("experiment", help="experiments; `degradation`: plain vs residual")
    p.add_argument("name", choices=["degradation"])
    p.add_argument("--data", default="digits")
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, default=1, help="runs per net; reports mean ± std")
    p.add_argument("--recipe", help="e.g. paper-cifar")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--out", help="output folder (default runs/degradation-TIME)")

    p = sub.add_parser("tune", help="hyper-parameter search (Optuna), resumable")
    p.add_argument("--data", help="DATA (default digits; a continued study keeps its own)")
    p.add_argument("--model", help="default resnet20; a continued study keeps its own")
    p.add_argument("--epochs", type=int, help="per trial (default 8; a continued study: its own)")
    p.add_argument("--trials", type=int, default=10, help="finished trials wanted in total")
    p.add_argument("--timeout", type=float, help="seconds for this invocation")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db)")
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--config", help="base settings YAML")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("serve", help="HTTP API + upload page for a trained model")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                   help="fp32 (default) gives the same probabilities alone or batched")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=16, help="1 turns micro-batching off")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=64, help="beyond this: 503 + Retry-After")
    p.add_argument("--max-body-mb", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads")

    p = sub.add_parser("report", help="RUN/report.html: curves, confusion matrix, examples")
    p.add_argument("run")
    p.add_argument("--data", help="DATA to evaluate on (default: the run's own)")
    p.add_argument("--top-losses", type=int, default=12)
    return parser


def _add_train_parser(sub) -> None:
    from .train.config import MODES, OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES

    p = sub.add_parser(
        "train",
        help="train a model; writes a run folder",
        description="Train from scratch, fine-tune or feature-extract. Flags override "
        "--config FILE.yaml, which overrides --recipe, which overrides the defaults.",
    )
    S = argparse.SUPPRESS
    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, help="digits (default), a folder, mnist:DIR, ...")
    g.add_argument("--input-size", type=int, default=S, help="square side fed to the model")
    g.add_argument("--preset", default=S, help="augmentation: auto, imagenet, cifar, small")
    g.add_argument("--auto-augment", default=S, help="none, trivial, randaugment")
    g.add_argument("--random-erasing", type=float, default=S, help="probability per image")
    g.add_argument("--mean", type=float, nargs="+", default=S)
    g.add_argument("--std", type=float, nargs="+", default=S)
    g.add_argument("--val-ratio", type=float, default=S)
    g.add_argument("--test-ratio", type=float, default=S)
    g.add_argument("--max-bad-fraction", type=float, default=S,
                   help="abort when more unreadable files than this (default 0.01)")  # fmt: skip
    g.add_argument("--cache", default=S, help="auto, memory, none: decode once into memory")
    g.add_argument("--download", action="store_true", default=S)
    g.add_argument("--in-chans", type=int, choices=[1, 3], default=S)
    g.add_argument("--num-workers", type=int, default=S)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S, help="a name from `resnetlab models` (resnet20)")
    g.add_argument("--model-kwargs", nargs="+", default=S, metavar="KEY=VALUE",
                   help="e.g. shortcut=B zero_init_residual=true")  # fmt: skip
    g.add_argument("--weights", default=S, help="torchvision, or a .pth/.safetensors file")
    g.add_argument("--mode", choices=MODES, default=S)
    g.add_argument("--backbone-lr-mult", type=float, default=S)
    g.add_argument("--unfreeze-schedule", type=int, nargs="+", default=S, metavar="EPOCH",
                   help="epochs at which one more stage unfreezes, from the top")  # fmt: skip
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=S)
    g.add_argument("--epochs", type=int, default=S)
    g.add_argument("--batch-size", type=int, default=S)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=S)
    g.add_argument("--lr", type=float, default=S)
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--weight-decay", type=float, default=S)
    g.add_argument("--decay-norm-and-bias", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--schedule", choices=SCHEDULES, default=S)
    g.add_argument("--warmup-epochs", type=float, default=S)
    g.add_argument("--milestones", type=float, nargs="+", default=S,
                   help="multistep: epochs, or fractions of the run below 1")  # fmt: skip
    g.add_argument("--gamma", type=float, default=S)
    g.add_argument("--label-smoothing", type=float, default=S)
    g.add_argument("--mixup", type=float, default=S, help="Beta alpha, e.g. 0.2")
    g.add_argument("--cutmix", type=float, default=S, help="Beta alpha, e.g. 1.0")
    g.add_argument("--ema-decay", type=float, default=S, help="e.g. 0.999")
    g.add_argument("--clip-grad", type=float, default=S)
    g.add_argument("--patience", type=int, default=S, help="early stopping (epochs)")
    g.add_argument("--lr-find", action="store_true", help="run an LR range test and stop")
    g = p.add_argument_group("system")
    g.add_argument("--precision", choices=PRECISIONS, default=S)
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S)
    g.add_argument("--compile", action="store_true", default=S)
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--deterministic", action="store_true", default=S)
    g.add_argument("--sync-bn", action="store_true", default=S)
    g.add_argument("--checkpoint-every", type=int, default=S, help="steps; 0: per epoch")
    g.add_argument("--max-steps", type=int, default=S, help="stop resumably after N steps")
    g.add_argument("--out", default=S, help="parent folder of run folders (runs)")
    g.add_argument("--name", default=S, help="run folder name (default: model-data-time)")
    g.add_argument("--tensorboard", action="store_true", default=S)
    g.add_argument("--config", help="YAML file of settings (e.g. a run's config.yaml)")
    g.add_argument("--resume", help="run folder or checkpoint to continue")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def _add_split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-ratio", type=float, default=0.1, help="held out when no val split")
    p.add_argument("--test-ratio", type=float, default=0.1, help="held out for a single folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-chans", type=int, choices=[1, 3], help="force greyscale or RGB")
    p.add_argument("--download", action="store_true", help="fetch MNIST/CIFAR when online")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_allocator()
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is handled below, not at exit
        return status
    except BrokenPipeError:
        # `resnetlab predict … | head`: the reader has gone; stop quietly, as `yes | head` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE
    except ResnetlabError as exc:  # the user's to fix: one line; anything else is a bug
        print(f"resnetlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
