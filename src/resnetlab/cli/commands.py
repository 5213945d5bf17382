"""`resnetlab` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from ..core.errors import ConfigError, ResnetlabError
from ..core.fmt import pct, shell_command, table
from ..core.runtime import tune_allocator
from .parser import build_parser

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from ..models import get_model_entry, list_models
    from ..models.registry import natural_key
    from ..models.summary import format_models, format_weights, model_info

    names = sorted(
        list_models(args.pattern, family=args.family),
        key=lambda n: (get_model_entry(n).family != "imagenet", natural_key(n)),
    )
    if not names:
        raise ConfigError(f"no model matches {args.pattern!r}; try `resnetlab models` for all")
    rows = [model_info(name) for name in names]
    if args.weights:
        print(format_weights(names))
        return 0
    print(json.dumps(rows, indent=2) if args.json else format_models(rows, args.paper))
    return 0


@command("summary")
def cmd_summary(args: argparse.Namespace) -> int:
    from ..models import create_model
    from ..models.summary import (
        bottleneck_version,
        format_summary,
        resolve_input_size,
        small_input_note,
        summarize,
    )

    size = resolve_input_size(args.model, args.input_size, args.in_chans)
    model = create_model(args.model, num_classes=args.num_classes, in_chans=size[0])
    version = bottleneck_version(model)
    if args.v1:
        if version is None:
            raise ConfigError(f"--v1: {args.model} has no bottleneck blocks (v1 and v1.5 differ "
                              "only in where a bottleneck strides)")  # fmt: skip
        model = create_model(args.model, num_classes=args.num_classes, in_chans=size[0],
                             stride_in_1x1=True)  # fmt: skip
        version = "v1"
    print(format_summary(args.model, summarize(model, size, depth=args.depth), version))
    note = small_input_note(args.model, size)
    if note:
        print(f"\n{note}")
    return 0


@command("stats")
def cmd_stats(args: argparse.Namespace) -> int:
    import logging

    from ..data import dataset_stats, load_source
    from ..data.problems import collect_problems
    from ..data.stats import format_report

    quiet = logging.getLogger("resnetlab.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # bad files are listed in the report instead
    try:
        with collect_problems() as problems:  # listed with the rest: none stops the doctor
            source = load_source(args.data, val_ratio=args.val_ratio,
                                 test_ratio=args.test_ratio, seed=args.seed,
                                 download=args.download, channels=args.in_chans,
                                 max_bad_fraction=1.0, task=args.task, check=False)  # fmt: skip
            # Each file decoded once: its check and its statistics (progress on stderr).
            report = dataset_stats(source, input_size=args.input_size, progress=True)
    finally:
        quiet.setLevel(level)  # the doctor lists every bad file; the process keeps its logging
    report["problems"] = list(problems)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 1 if report["bad_files"] or report["problems"] else 0


@command("audit")
def cmd_audit(args: argparse.Namespace) -> int:
    from ..audit import audit, format_audit, public
    from ..audit.core import next_steps, write_exclude_file, write_relabel_file

    for flag, path in (("--write-exclude", args.write_exclude),
                       ("--write-relabel", args.write_relabel)):  # fmt: skip
        if path and os.path.exists(path):  # said before the work, not after it
            raise ConfigError(f"{flag} {path}: the file exists; give a new name (nothing is "
                              "overwritten)")  # fmt: skip
    if args.write_relabel and not (args.labels or args.oof):
        raise ConfigError("--write-relabel writes the label issues: add --labels")
    result = audit(args.data, val_ratio=args.val_ratio, test_ratio=args.test_ratio,
                   seed=args.seed, channels=args.in_chans, download=args.download,
                   task=args.task, near=not args.exact_only, labels=args.labels, run=args.run,
                   oof=args.oof, folds=args.folds)  # fmt: skip
    written: dict[str, str] = {}
    notes = []
    if args.write_exclude:
        path, n = write_exclude_file(result, args.write_exclude)
        written["exclude"] = str(path)
        notes.append(f"wrote {path} ({n} image(s) to leave out)")
    if args.write_relabel:
        path, n = write_relabel_file(result, args.write_relabel)
        written["relabel"] = str(path)
        notes.append(f"wrote {path} ({n} suggested label(s): check the label column, edit it, "
                     "delete the rows to keep as they are)")  # fmt: skip
    if args.html:
        from ..audit.page import write_page

        notes.append(f"wrote {write_page(result, args.html)}")
    report = result.report
    if args.json:
        print(json.dumps(public(report), indent=2, ensure_ascii=False))
    else:
        print(format_audit(report))
    found_by = ["--oof", args.oof] if args.oof else ["--labels"] * args.labels + (
        ["--run", args.run] if args.run and args.labels else [])  # fmt: skip
    steps = next_steps(report, args.data, written, found_by)
    if not args.html and not args.json:
        steps.append(shell_command("resnetlab", "audit", args.data, *found_by, "--html",
                                   "audit.html"))  # fmt: skip
    out = sys.stderr if args.json else sys.stdout
    for line in notes:
        print(line, file=out)
    if steps:
        print("next:\n" + "\n".join(f"  {x}" for x in steps), file=out)
    s = report["duplicate_summary"]
    # 1: something to act on (as stats does for unreadable files); copies within one class
    # and split only cost time.
    act = s["leaks"] or s["conflicts"] or report["label_issues"] or report["unreadable"]
    return 1 if act else 0


@command("shard")
def cmd_shard(args: argparse.Namespace) -> int:
    from ..data import load_source, parse_size, write_shards
    from ..data.shard import format_index

    size = parse_size(args.shard_size)  # a bad size fails before the data is read
    source = load_source(
        args.data, val_ratio=args.val_ratio, test_ratio=args.test_ratio, seed=args.seed,
        download=args.download, channels=args.in_chans, max_bad_fraction=args.max_bad_fraction,
    )  # fmt: skip
    index = write_shards(source, args.out, shard_size_bytes=size, seed=args.seed)
    print(format_index(index, args.out))
    return 0


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
        print(f"out-of-fold probabilities {r['oof']}: likely wrong labels with "
              + shell_command("resnetlab", "audit", cfg.data, "--oof", r["oof"]))  # fmt: skip
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
        print(f"rank {trainer.dist.rank}/{trainer.dist.world_size}: final weights sha256 "
              f"{s['weights_sha256']}", flush=True)  # fmt: skip
    if not trainer.dist.is_main or args.quiet:
        return 0
    from ..train.closing import closing_lines

    run = s["run_dir"]
    print("\n" + "\n".join(closing_lines(s)[:-1]))  # the run folder below, with what next
    held_out = any(s.get(k) is not None for k in ("best_val_top1", "test_top1", "best_val_map",
                                                   "test_map"))  # fmt: skip
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
    print(f"run folder        {run}\nnext:\n"
          + "\n".join(f"  {shell_command('resnetlab', *x)}" for x in steps))  # fmt: skip
    return 0


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from ..analysis.evaluate import evaluate_run

    r = evaluate_run(
        args.run, data=args.data, split=args.split, batch_size=args.batch_size, tta=args.tta,
        top_losses=args.top_losses, precision=args.precision, backend=args.backend,
        device=args.device, max_bad_fraction=args.max_bad_fraction, out_dir=args.out,
    )  # fmt: skip
    if r.get("backend_note"):
        print(r["backend_note"], file=sys.stderr)
    if args.json:
        print(json.dumps(r, indent=2, ensure_ascii=False))
        return 0
    tta = " (flip TTA)" if r["tta"] else ""
    print(f"{r['split']} split of {r['data']}: {r['num_samples']} images{tta}")
    if r.get("task") == "multilabel":
        print(f"mAP {pct(r['map'])} (chance {pct(r['chance_map'])})   F1 micro "
              f"{pct(r['f1_micro'])}   macro {pct(r['f1_macro'])}   exact match "
              f"{pct(r['exact_match'])}   loss {r['loss']:.4f}\n")  # fmt: skip
        rows = [[name, "-" if m["ap"] is None else f"{m['ap']:.3f}", f"{m['precision']:.3f}",
                 *_recall_f1(m), f"{m['threshold']:.2f}", str(m["support"])]
                for name, m in r["per_class"].items()]  # fmt: skip
        head = ["label", "AP", "precision", "recall", "F1", "threshold", "support"]
    else:
        print(f"top-1 {pct(r['top1'])}   top-5 {pct(r['top5'])}   loss {r['loss']:.4f}")
        print(f"balanced accuracy {pct(r['balanced_accuracy'])}   macro-F1 "
              f"{pct(r['f1_macro'])}   ECE {pct(r['ece'])}\n")  # fmt: skip
        predicted = dict(zip(r["classes"], np.asarray(r["confusion_matrix"]).sum(0).tolist()))
        rows = [[name, f"{m['precision']:.3f}" if m["support"] or predicted.get(name) else "-",
                 *_recall_f1(m), str(m["support"])]
                for name, m in r["per_class"].items()]  # fmt: skip
        head = ["class", "precision", "recall", "F1", "support"]
    print(table(head, rows, right_from=1) + "\n")
    for key, path in r["files"].items():
        print(f"{key.replace('_', ' '):22} {path}")
    return 0


def _recall_f1(m: dict) -> list[str]:
    """A class the split has no image of has no recall or F1 to give: "no images", not the
    zeros that read as a model that never finds it."""
    if not m["support"]:
        return ["no images", "-"]
    return [f"{m['recall']:.3f}", f"{m['f1']:.3f}"]


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    from ..data.images import is_image_file
    from ..inference.predict import build_predictor, expand_inputs

    run, inputs = args.run, list(args.inputs)
    if args.model:  # no run: every positional is an input
        inputs, run = ([run] if run else []) + inputs, None
    if run and is_image_file(run) and not os.path.isdir(run):
        raise ConfigError(
            f"{run} is an image, not a run: give the run folder (or model file) "
            "first, e.g. " + shell_command("resnetlab", "predict", "runs/NAME", run)
        )
    if not inputs:
        raise ConfigError("no input images: resnetlab predict RUN IMAGE_OR_FOLDER_OR_GLOB ...")
    skipped: list[tuple[str, str]] = []
    paths = expand_inputs(inputs, skipped)
    if not paths:
        raise ConfigError("no input images: give image files, folders or globs"
                          + "".join(f"; {p}: {why}" for p, why in skipped[:3]))  # fmt: skip
    predictor = build_predictor(
        run, model=args.model, weights=args.weights, backend=args.backend, device=args.device,
        batch_size=args.batch_size, precision=args.precision, streams=args.streams, tta=args.tta,
    )  # fmt: skip
    rows = predictor.iter_predict_paths(paths, topk=args.topk)
    form = "csv" if args.csv else "json" if args.json else "text"
    with _prediction_output(args.csv or args.json) as out:
        total, bad = _write_predictions(rows, out, form, predictor.multilabel, len(paths))
    if predictor.choice is not None:  # after the work: an error stays the only line
        print(predictor.choice.note, file=sys.stderr)
    _print_skipped("predict", skipped)
    if bad:
        print(f"resnetlab predict: {bad} of {total} file(s) could not be read", file=sys.stderr)
    return 1 if bad else 0


def _output_flags(argv: list[str]) -> list[str]:
    """``predict``'s ``--csv [FILE]`` and ``--json [FILE]``: what follows the flag is its FILE
    unless it is an input (an image's name, a folder, a glob, ``-``) or another flag (then
    the rows go to standard output). Each is moved to the end as ``--csv=FILE``, so that the
    inputs around it stay together (``predict RUN --json a.jpg b.jpg`` reads both)."""
    if "predict" not in argv:
        return argv
    import glob

    from ..data.images import is_image_file

    out, moved, i = [], [], 0
    while i < len(argv):
        word = argv[i]
        if word in ("--csv", "--json"):
            value = argv[i + 1] if i + 1 < len(argv) else None
            if value is None or value.startswith("-") or is_image_file(value) or (
                os.path.isdir(value) or glob.has_magic(value)
            ):  # fmt: skip
                moved.append(f"{word}=-")
            else:
                moved.append(f"{word}={value}")
                i += 1
        elif word.startswith(("--csv=", "--json=")):
            moved.append(word)
        else:
            out.append(word)
        i += 1
    return out + moved


@contextlib.contextmanager
def _prediction_output(target: str | None):
    """Standard output (no FILE, or ``-``), else FILE, opened for the rows as they come."""
    if not target or target == "-":
        yield sys.stdout
        return
    try:
        f = open(target, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    with f:
        yield f
    print(f"wrote {target}", file=sys.stderr)


def _write_predictions(rows, out, form: str, multilabel: bool, total: int) -> tuple[int, int]:
    """Each row written as it comes and flushed (a log, a pipe or FILE has it at once; none is
    held): ``form`` text, csv or json (the same JSON array as all rows at once). Progress on
    stderr, unless the rows themselves go to the terminal. Returns (rows, unreadable)."""
    import csv
    import textwrap

    from ..core.progress import Meter, is_terminal

    w = csv.writer(out) if form == "csv" else None
    ml = multilabel  # each label's threshold too, and a row (no label) for an image with none
    if w is not None:
        w.writerow(["path", "rank", "label", "index", "prob", *["threshold"] * ml, "error"])
    if form == "json":
        out.write("[")
    count = bad = 0
    shown = not (out is sys.stdout and is_terminal(sys.stdout))
    with Meter("predict", total, enabled=shown) as meter:
        for r in rows:
            if w is not None:
                if r["error"] or not r["topk"]:
                    w.writerow([r["path"], "", "", "", "", *[""] * ml, r["error"] or ""])
                for rank, t in enumerate(r["topk"], start=1):
                    w.writerow([r["path"], rank, t["label"], t["index"], f"{t['prob']:.6f}",
                                *[f"{t.get('threshold', 0.5):.6f}"] * ml, ""])  # fmt: skip
            elif form == "json":
                text = json.dumps(r, indent=2, ensure_ascii=False)
                out.write(("," if count else "") + "\n" + textwrap.indent(text, "  "))
            else:
                tops = ", ".join(f"{t['label']} {pct(t['prob'], 1)}" for t in r["topk"]) or (
                    "no label above its threshold"  # multi-label: none of the labels
                )
                out.write(f"{r['path']}: " + (f"ERROR {r['error']}" if r["error"] else tops)
                          + "\n")  # fmt: skip
            out.flush()
            count += 1
            bad += bool(r["error"])
            meter.update()
    if form == "json":
        out.write("\n]\n" if count else "]\n")
    return count, bad


def _print_skipped(name: str, skipped: list[tuple[str, str]], show: int = 10) -> None:
    """Name the files of the folders given that were left out (the first ``show``)."""
    if not skipped:
        return
    lines = [f"resnetlab {name}: left out {len(skipped)} file(s) not named as images:"]
    lines += [f"  {path}: {why}" for path, why in skipped[:show]]
    if len(skipped) > show:
        lines.append(f"  ... and {len(skipped) - show} more")
    print("\n".join(lines), file=sys.stderr)


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "hub":
        return _export_hub(args)
    if args.format == "openvino":
        return _export_openvino(args)
    from ..inference.export import export, real_inputs

    real = real_inputs(args.run) if args.verify else None
    r = export(args.run, fmt=args.format, out=args.out, do_verify=args.verify, real=real,
               int8=args.int8, calibration=args.calibration, data=args.data)  # fmt: skip
    print(f"wrote {r['path']} ({r['bytes'] / 2**20:.1f} MiB, {r['format']})")
    for name, diff in (r["max_abs_diff"] if args.verify else {}).items():
        print(f"verified {name}: max |difference| {diff:.2e}")
    if args.int8:
        q = r["int8"]
        print(
            f"wrote {q['path']} ({q['bytes'] / 2**20:.1f} MiB, int8; calibrated on "
            f"{q['calibration_images']} {q['calibration_split']} images)"
        )
        if "fp32_map" in q:  # multi-label
            print(f"int8 on {q['measured_on']}: mAP {pct(q['int8_map'])} vs fp32 "
                  f"{pct(q['fp32_map'])} ({q['delta_points']:+.2f} points), label decisions "
                  f"agreeing {pct(q['label_agreement'])}")  # fmt: skip
        else:
            print(f"int8 on {q['measured_on']}: top-1 {pct(q['int8_top1'])} vs fp32 "
                  f"{pct(q['fp32_top1'])} ({q['delta_points']:+.2f} points), top-1 agreement "
                  f"{pct(q['top1_agreement'])}")  # fmt: skip
        print("  " + shell_command("resnetlab", "predict", args.run, "IMAGES", "--backend",
                                   "onnx-int8"))  # fmt: skip
    return 0


def _export_hub(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..inference.hub import export_hub

    home = Path(args.run) if os.path.isdir(args.run) else Path(args.run).parent
    r = export_hub(args.run, args.out or home / "hub")
    print(f"wrote {r['path']} ({r['bytes'] / 2**20:.1f} MiB: config.json, model.safetensors, "
          "README.md)")  # fmt: skip
    if r["timm"]:
        print(f"  timm.create_model('local-dir:{r['path']}') opens it ({r['architecture']})")
    else:
        print(f"  timm has no {r['architecture']}; resnetlab reads it: --weights {r['path']}")
    print("  " + shell_command("resnetlab", "push", args.run, "ORG/NAME"))
    return 0


def _export_openvino(args: argparse.Namespace) -> int:
    from ..inference.export import real_inputs
    from ..inference.openvino_ir import export_openvino

    real = real_inputs(args.run) if args.verify else None
    r = export_openvino(args.run, out=args.out, do_verify=args.verify, real=real,
                        int8=args.int8, calibration=args.calibration, data=args.data)  # fmt: skip
    print(f"wrote {r['path']} (+ .bin, {r['bytes'] / 2**20:.1f} MiB, OpenVINO IR, fp32 weights; "
          "preprocessing in its runtime info)")  # fmt: skip
    checks = r.get("verify", {})
    for name, diff in checks.get("fp32", {}).items():
        print(f"verified {name}: max |difference| {diff:.2e}")
    if "bf16" in checks:
        b = checks["bf16"]
        print(
            f"bf16 (this CPU runs it natively): max |difference| "
            f"{max(b['max_abs_diff'].values()):.2e}, top-1 agreement {pct(b['top1_agreement'])}"
        )
    elif args.verify:
        print("bf16: not checked (this CPU has no native bf16)")
    if args.int8:
        q = r["int8"]
        print(f"wrote {q['path']} (+ .bin, {q['bytes'] / 2**20:.1f} MiB, int8; calibrated on "
              f"{q['calibration_images']} {q['calibration_split']} images)")  # fmt: skip
        if "fp32_top1" in q:
            print(f"int8 on {q['measured_on']}: top-1 {pct(q['int8_top1'])} vs fp32 "
                  f"{pct(q['fp32_top1'])} ({q['delta_points']:+.2f} points)")  # fmt: skip
    return 0


@command("push")
def cmd_push(args: argparse.Namespace) -> int:
    from ..inference.hub import push

    r = push(args.run, args.repo_id, private=args.private, token=args.token,
             message=args.message)  # fmt: skip
    print(f"pushed {args.repo_id} ({r['bytes'] / 2**20:.1f} MiB): {r['url']}")
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from ..analysis.report import build_report

    path = build_report(args.run, data=args.data, top_losses=args.top_losses, out=args.out)
    print(f"wrote {path}")
    return 0


@command("experiment")
def cmd_experiment(args: argparse.Namespace) -> int:
    from ..experiments.degradation import format_degradation, run_degradation

    keys = ("batch_size", "lr", "precision", "device")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k)}
    r = run_degradation(data=args.data, depths=tuple(args.depths), epochs=args.epochs,
                        seeds=args.seeds, out=args.out, recipe=args.recipe,
                        overrides=overrides)  # fmt: skip
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
    r = run_tune(base, trials=args.trials, timeout=args.timeout, out=args.out,
                 storage=args.storage, seed=args.seed)  # fmt: skip
    print(f"best trial {r['best_trial']}: val top-1 {pct(r['best_value'])}")
    for k, v in r["best_params"].items():
        print(f"  {k:16} {v:.4g}" if isinstance(v, float) else f"  {k:16} {v}")
    print(f"trials: {r['trials']}")
    again = shell_command("resnetlab", "train", "--config", r["best_yaml"])
    print(f"wrote {r['best_yaml']} (train with: {again})")
    print(f"plot  {r['plot']}")
    return 0


@command("explain")
def cmd_explain(args: argparse.Namespace) -> int:
    from ..analysis.explain import explain_files
    from ..artifacts.run import output_folder
    from ..core.device import resolve_device
    from ..inference.loading import load_model
    from ..inference.predict import expand_inputs

    paths = expand_inputs(args.inputs)
    if not paths:
        raise ConfigError("no input images: resnetlab explain RUN IMAGE_OR_FOLDER_OR_GLOB ...")
    loaded = load_model(args.run)
    out = output_folder(args.out, loaded.home.explain_dir, "the Grad-CAM overlays")
    rows = explain_files(loaded, paths, out, class_name=args.class_name,
                         device=resolve_device(args.device))  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    for r in [] if args.json else rows:
        done = f"{r['class']} {pct(r['prob'], 1)} -> {r['out']}"
        print(f"{r['path']}: " + (f"ERROR {r['error']}" if r["error"] else done))
    bad = sum(1 for r in rows if r["error"])
    if bad:
        print(f"resnetlab explain: {bad} of {len(rows)} file(s) could not be read", file=sys.stderr)
    return 1 if bad else 0


@command("average")
def cmd_average(args: argparse.Namespace) -> int:
    from ..train.average import average_runs

    s = average_runs(args.runs, args.out, bn=args.bn, data=args.data, device=args.device,
                     batch_size=args.batch_size)  # fmt: skip
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
    print(f"wrote {r['path']} ({r['tensors']} tensors from {r['framework']}, "
          f"{r['num_classes']} classes; {left} non-model entries left out)")  # fmt: skip
    kwargs = [f"{k}={str(v).lower()}" for k, v in r["model_kwargs"].items()]
    kwargs = ["--model-kwargs", *kwargs] if kwargs else []
    print("  " + shell_command("resnetlab", "train", "--model", args.model, "--weights", r["path"],
                               *kwargs, "--data", "DATA"))  # fmt: skip
    return 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.app import serve

    serve(
        args.run, host=args.host, port=args.port, backend=args.backend, device=args.device,
        precision=args.precision, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, max_body_mb=args.max_body_mb, workers=args.workers,
        max_reading=args.max_reading, max_connections=args.max_connections,
        api_key=args.api_key, cors_origins=args.cors_origin or (), log_level=args.log_level,
        log_format=args.log_format, processes=args.processes,
        shutdown_timeout=args.shutdown_timeout, tta=args.tta,
    )  # fmt: skip
    return 0


@command("runs")
def cmd_runs(args: argparse.Namespace) -> int:
    from ..analysis.report.runs import format_runs, list_runs, runs_csv, runs_json

    rows = list_runs(args.folder, sort=args.sort, filters=args.filter, reverse=args.reverse)
    if args.json:
        print(runs_json(rows))
    elif args.csv:
        sys.stdout.write(runs_csv(rows))
    else:
        print(format_runs(rows, args.folder))
    return 0


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    from ..analysis.report.compare import (
        compare_runs,
        format_compare,
        html_hint,
        write_compare_html,
    )

    r = compare_runs(args.runs, split=args.split, evaluate=not args.no_evaluate,
                     device=args.device)  # fmt: skip
    if args.html:
        r["html"] = str(write_compare_html(r, args.html))
    if args.json:
        print(json.dumps(r, indent=2, ensure_ascii=False, default=str))
        return 0
    print(format_compare(r))
    print(f"\nwrote {r['html']}" if args.html else f"\nHTML page: {html_hint(args.runs)}")
    return 0


# Commands that finish in seconds, where tearing the interpreter down (every module of torch,
# onnxruntime and OpenVINO freed one by one) would add 0.4-0.5 s to a 2-3 s run.
QUICK_COMMANDS = frozenset({"models", "summary", "predict", "evaluate", "export", "explain"})


def exit_now(status: int) -> NoReturn:
    """End the process with ``status`` as the interpreter would (threads joined, exit
    handlers run: logging, thread pools, child processes; stdout/stderr flushed), without
    its teardown of every module."""
    threading._shutdown()  # what the interpreter's exit does first (OpenVINO leaves a pool)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or file: nothing to add
            stream.flush()
    os._exit(status)


def _is_entry_point(argv: Sequence[str] | None) -> bool:
    """Whether ``main`` runs as the program (`resnetlab`, `python -m resnetlab`: the entry
    script holds this very function as ``__main__.main``). Called from Python (tests, a
    notebook), ``main`` returns to its caller as usual; so it does on a Python without
    ``threading._shutdown`` (CPython has it)."""
    entry = getattr(sys.modules.get("__main__"), "main", None) is main
    return argv is None and entry and hasattr(threading, "_shutdown")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_output_flags(list(sys.argv[1:] if argv is None else argv)))
    tune_allocator()
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is handled below, not at exit
        if args.command in QUICK_COMMANDS and _is_entry_point(argv):
            exit_now(status)
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
