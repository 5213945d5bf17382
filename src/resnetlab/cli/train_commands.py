"""The commands that train: ``train``, ``experiment``, ``tune``, ``average`` (weights of
several runs), ``convert`` (another framework's checkpoint)."""

from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import ConfigError
from ..core.fmt import pct, shell_command
from .registry import command


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from ..train import Trainer, resolve_config

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Only the flags given are in the namespace (their defaults are SUPPRESS).
    extra = ("command", "config", "resume", "lr_find", "quiet", "folds")
    overrides = {k: v for k, v in vars(args).items() if k not in extra}
    if args.resume and (args.config or args.lr_find):
        flag = "--config" if args.config else "--lr-find"
        raise ConfigError(f"--resume continues a run with its saved settings; {flag} can't join it")
    if args.resume:
        trainer = Trainer(resume=args.resume, verbose=not args.quiet, overrides=overrides)
        return _fit_and_report(trainer, args)
    cfg = resolve_config(overrides, config_file=args.config)
    if args.folds:  # K normal runs under one folder; the same command resumes it
        from ..experiments.kfold import kfold_folder, run_kfold

        out = kfold_folder(cfg, args.folds)
        r = run_kfold(cfg, args.folds, out, verbose=not args.quiet)
        for name, m in r["metrics"].items():
            print(f"{name:18} {m['mean']:.4g} ± {m['std']:.2g}")
        print(
            f"best fold {r['best_fold']}: "
            + shell_command("resnetlab", "predict", r["best_run"], "IMAGES")
        )
        print(
            f"out-of-fold probabilities {r['oof']}: likely wrong labels with "
            + shell_command("resnetlab", "audit", cfg.data, "--oof", r["oof"])
        )
        return 0
    if args.lr_find:
        from ..train.lr_find import lr_find

        result = lr_find(cfg)
        print(f"suggested --lr {result['suggestion']:.3g}  (plot: {result['plot']})")
        return 0
    from ..train.elastic import elastic_start, record_run

    # Under torchrun a restarted job continues its run from the last checkpoint.
    start = elastic_start(cfg.out, cfg.name)
    if start.resume is not None:
        trainer = Trainer(resume=start.resume, verbose=not args.quiet, overrides=overrides)
    else:
        cfg.name = start.name
        trainer = Trainer(cfg, verbose=not args.quiet)
    if trainer.dist.is_main:
        record_run(trainer.run_dir)
    return _fit_and_report(trainer, args)


def _fit_and_report(trainer, args: argparse.Namespace) -> int:
    from ..train import RunStopped
    from ..train.distributed import cleanup

    try:
        try:
            s = trainer.fit()
        finally:
            cleanup(trainer.dist)
    except RunStopped as exc:
        again = shell_command("resnetlab", "train", "--resume", exc.run_dir)
        print(f"resnetlab train: {exc}; continue with: {again}", file=sys.stderr)
        return 128 + exc.signum if exc.interrupted else 0  # 130 Ctrl-C, 143 SIGTERM
    if trainer.dist.enabled:
        print(
            f"rank {trainer.dist.rank}/{trainer.dist.world_size}: final weights sha256 "
            f"{s['weights_sha256']}",
            flush=True,
        )
    if not trainer.dist.is_main or args.quiet:
        return 0
    from ..train.closing import closing_lines

    run = s["run_dir"]
    print("\n" + "\n".join(closing_lines(s)[:-1]))  # the run folder below, with what next
    held_out = any(
        s.get(k) is not None for k in ("best_val_top1", "test_top1", "best_val_map", "test_map")
    )
    if held_out and trainer.cfg.tracker != "none":  # the tracker run gets the report too
        from ..analysis.report import build_report

        print(f"report            {build_report(run)} (added to the {trainer.cfg.tracker} run)")
    # evaluate and report need images the model did not train on
    steps = [["evaluate", run]] * held_out + [["predict", run, "IMAGE_OR_FOLDER"]]
    longer = s["epochs_completed"] + 10
    steps += [["report", run]] * held_out + [
        ["export", run, "--format", "onnx", "--verify"],
        ["train", "--resume", run, "--epochs", longer],
    ]
    print(
        f"run folder        {run}\nnext:\n"
        + "\n".join(f"  {shell_command('resnetlab', *x)}" for x in steps)
    )
    return 0


@command("experiment")
def cmd_experiment(args: argparse.Namespace) -> int:
    from ..experiments.degradation import format_degradation, run_degradation

    keys = ("batch_size", "lr", "precision", "device")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k)}
    r = run_degradation(
        data=args.data,
        depths=tuple(args.depths),
        epochs=args.epochs,
        seeds=args.seeds,
        out=args.out,
        recipe=args.recipe,
        overrides=overrides,
    )
    print("\n" + format_degradation(r))
    print(f"\nfigure {r['figure']}; table and summary beside it")
    return 0


@command("tune")
def cmd_tune(args: argparse.Namespace) -> int:
    from ..experiments.tune import run_tune

    # Flags not given stay out: a continued study keeps its saved value (defaults for a new one).
    flags = {"data": args.data, "model": args.model, "epochs": args.epochs, "device": args.device}
    base = {k: v for k, v in flags.items() if v is not None}
    if args.config:
        from ..train.config import load_yaml

        base = {**load_yaml(args.config), **base}
    r = run_tune(
        base,
        trials=args.trials,
        timeout=args.timeout,
        out=args.out,
        storage=args.storage,
        seed=args.seed,
    )
    print(f"best trial {r['best_trial']}: val top-1 {pct(r['best_value'])}")
    for k, v in r["best_params"].items():
        print(f"  {k:16} {v:.4g}" if isinstance(v, float) else f"  {k:16} {v}")
    print(f"trials: {r['trials']}")
    again = shell_command("resnetlab", "train", "--config", r["best_yaml"])
    print(f"wrote {r['best_yaml']} (train with: {again})")
    print(f"plot  {r['plot']}")
    return 0


@command("average")
def cmd_average(args: argparse.Namespace) -> int:
    from ..train.average import average_runs

    s = average_runs(
        args.runs,
        args.out,
        bn=args.bn,
        data=args.data,
        device=args.device,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    print(f"averaged {len(s['averaged_from'])} models into {s['run_dir']}\n{s['bn_note']}")
    if s.get("best_val_top1") is not None:
        members = ", ".join(pct(v) for v in s["member_val_top1"])
        print(f"val top-1  {pct(s['best_val_top1'])} (members: {members})")
    if s.get("test_top1") is not None:
        members = ", ".join(pct(v) for v in s["member_test_top1"])
        print(f"test top-1 {pct(s['test_top1'])} (members: {members})")
    print("next:\n  " + shell_command("resnetlab", "evaluate", s["run_dir"]))
    return 0


@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    from ..artifacts.convert import convert

    r = convert(args.file, args.model, args.out)
    left = len(r["skipped"])
    print(
        f"wrote {r['path']} ({r['tensors']} tensors from {r['framework']}, "
        f"{r['num_classes']} classes; {left} non-model entries left out)"
    )
    kwargs = [f"{k}={str(v).lower()}" for k, v in r["model_kwargs"].items()]
    kwargs = ["--model-kwargs", *kwargs] if kwargs else []
    print(
        "  "
        + shell_command(
            "resnetlab",
            "train",
            "--model",
            args.model,
            "--weights",
            r["path"],
            *kwargs,
            "--data",
            "DATA",
        )
    )
    return 0
