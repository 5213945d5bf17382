"""The commands that use a trained model: ``evaluate``, ``predict``, ``export``, ``push``,
``report``, ``explain``, ``serve``, ``runs``, ``compare``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from ..core.errors import ConfigError
from ..core.fmt import pct, shell_command, table
from .registry import command


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..analysis.evaluate import evaluate_run
    from ..tasks import task_of

    r = evaluate_run(
        args.run,
        data=args.data,
        split=args.split,
        batch_size=args.batch_size,
        tta=args.tta,
        top_losses=args.top_losses,
        precision=args.precision,
        backend=args.backend,
        device=args.device,
        max_bad_fraction=args.max_bad_fraction,
        out_dir=args.out,
    )
    if r.get("backend_note"):
        print(r["backend_note"], file=sys.stderr)
    if args.json:
        print(json.dumps(r, indent=2, ensure_ascii=False))
        return 0
    tta = " (flip TTA)" if r["tta"] else ""
    print(f"{r['split']} split of {r['data']}: {r['num_samples']} images{tta}")
    head, rows = _EVALUATION_TABLES[task_of(r).name](r)
    print(table(head, rows, right_from=1) + "\n")
    for key, path in r["files"].items():
        print(f"{key.replace('_', ' '):22} {path}")
    return 0


def _multilabel_table(r: dict) -> tuple[list[str], list[list[str]]]:
    """Print the multi-label measures; the per-label table."""
    print(
        f"mAP {pct(r['map'])} (chance {pct(r['chance_map'])})   F1 micro "
        f"{pct(r['f1_micro'])}   macro {pct(r['f1_macro'])}   exact match "
        f"{pct(r['exact_match'])}   loss {r['loss']:.4f}\n"
    )
    rows = [
        [
            name,
            "-" if m["ap"] is None else f"{m['ap']:.3f}",
            f"{m['precision']:.3f}",
            *_recall_f1(m),
            f"{m['threshold']:.2f}",
            str(m["support"]),
        ]
        for name, m in r["per_class"].items()
    ]
    head = ["label", "AP", "precision", "recall", "F1", "threshold", "support"]
    return head, rows


def _multiclass_table(r: dict) -> tuple[list[str], list[list[str]]]:
    """Print the single-label measures; the per-class table."""
    import numpy as np

    print(f"top-1 {pct(r['top1'])}   top-5 {pct(r['top5'])}   loss {r['loss']:.4f}")
    print(
        f"balanced accuracy {pct(r['balanced_accuracy'])}   macro-F1 "
        f"{pct(r['f1_macro'])}   ECE {pct(r['ece'])}\n"
    )
    predicted = dict(zip(r["classes"], np.asarray(r["confusion_matrix"]).sum(0).tolist()))
    rows = [
        [
            name,
            f"{m['precision']:.3f}" if m["support"] or predicted.get(name) else "-",
            *_recall_f1(m),
            str(m["support"]),
        ]
        for name, m in r["per_class"].items()
    ]
    head = ["class", "precision", "recall", "F1", "support"]
    return head, rows


# the lines and per-class table of an evaluation, by task
_EVALUATION_TABLES = {"multiclass": _multiclass_table, "multilabel": _multilabel_table}


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
        raise ConfigError(
            "no input images: give image files, folders or globs"
            + "".join(f"; {p}: {why}" for p, why in skipped[:3])
        )
    predictor = build_predictor(
        run,
        model=args.model,
        weights=args.weights,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        streams=args.streams,
        tta=args.tta,
    )
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
            if (
                value is None
                or value.startswith("-")
                or is_image_file(value)
                or (os.path.isdir(value) or glob.has_magic(value))
            ):
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
                    w.writerow(
                        [
                            r["path"],
                            rank,
                            t["label"],
                            t["index"],
                            f"{t['prob']:.6f}",
                            *[f"{t.get('threshold', 0.5):.6f}"] * ml,
                            "",
                        ]
                    )
            elif form == "json":
                text = json.dumps(r, indent=2, ensure_ascii=False)
                out.write(("," if count else "") + "\n" + textwrap.indent(text, "  "))
            else:
                tops = ", ".join(f"{t['label']} {pct(t['prob'], 1)}" for t in r["topk"]) or (
                    "no label above its threshold"  # multi-label: none of the labels
                )
                out.write(f"{r['path']}: " + (f"ERROR {r['error']}" if r["error"] else tops) + "\n")
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
    r = export(
        args.run,
        fmt=args.format,
        out=args.out,
        do_verify=args.verify,
        real=real,
        int8=args.int8,
        calibration=args.calibration,
        data=args.data,
    )
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
            print(
                f"int8 on {q['measured_on']}: mAP {pct(q['int8_map'])} vs fp32 "
                f"{pct(q['fp32_map'])} ({q['delta_points']:+.2f} points), label decisions "
                f"agreeing {pct(q['label_agreement'])}"
            )
        else:
            print(
                f"int8 on {q['measured_on']}: top-1 {pct(q['int8_top1'])} vs fp32 "
                f"{pct(q['fp32_top1'])} ({q['delta_points']:+.2f} points), top-1 agreement "
                f"{pct(q['top1_agreement'])}"
            )
        print(
            "  "
            + shell_command("resnetlab", "predict", args.run, "IMAGES", "--backend", "onnx-int8")
        )
    return 0


def _export_hub(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..inference.hub import export_hub

    home = Path(args.run) if os.path.isdir(args.run) else Path(args.run).parent
    r = export_hub(args.run, args.out or home / "hub")
    print(
        f"wrote {r['path']} ({r['bytes'] / 2**20:.1f} MiB: config.json, model.safetensors, "
        "README.md)"
    )
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
    r = export_openvino(
        args.run,
        out=args.out,
        do_verify=args.verify,
        real=real,
        int8=args.int8,
        calibration=args.calibration,
        data=args.data,
    )
    print(
        f"wrote {r['path']} (+ .bin, {r['bytes'] / 2**20:.1f} MiB, OpenVINO IR, fp32 weights; "
        "preprocessing in its runtime info)"
    )
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
        print(
            f"wrote {q['path']} (+ .bin, {q['bytes'] / 2**20:.1f} MiB, int8; calibrated on "
            f"{q['calibration_images']} {q['calibration_split']} images)"
        )
        if "fp32_top1" in q:
            print(
                f"int8 on {q['measured_on']}: top-1 {pct(q['int8_top1'])} vs fp32 "
                f"{pct(q['fp32_top1'])} ({q['delta_points']:+.2f} points)"
            )
    return 0


@command("push")
def cmd_push(args: argparse.Namespace) -> int:
    from ..inference.hub import push

    r = push(args.run, args.repo_id, private=args.private, token=args.token, message=args.message)
    print(f"pushed {args.repo_id} ({r['bytes'] / 2**20:.1f} MiB): {r['url']}")
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from ..analysis.report import build_report

    path = build_report(args.run, data=args.data, top_losses=args.top_losses, out=args.out)
    print(f"wrote {path}")
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
    rows = explain_files(
        loaded, paths, out, class_name=args.class_name, device=resolve_device(args.device)
    )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    for r in [] if args.json else rows:
        done = f"{r['class']} {pct(r['prob'], 1)} -> {r['out']}"
        print(f"{r['path']}: " + (f"ERROR {r['error']}" if r["error"] else done))
    bad = sum(1 for r in rows if r["error"])
    if bad:
        print(f"resnetlab explain: {bad} of {len(rows)} file(s) could not be read", file=sys.stderr)
    return 1 if bad else 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from ..core.optional import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "resnetlab serve")
    from ..serve.app import serve

    serve(
        args.run,
        host=args.host,
        port=args.port,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_mb=args.max_body_mb,
        workers=args.workers,
        max_reading=args.max_reading,
        max_connections=args.max_connections,
        api_key=args.api_key,
        cors_origins=args.cors_origin or (),
        log_level=args.log_level,
        log_format=args.log_format,
        processes=args.processes,
        shutdown_timeout=args.shutdown_timeout,
        tta=args.tta,
    )
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
    from ..analysis.report.compare import compare_runs, format_compare
    from ..analysis.report.compare_html import html_hint, write_compare_html

    r = compare_runs(args.runs, split=args.split, evaluate=not args.no_evaluate, device=args.device)
    if args.html:
        r["html"] = str(write_compare_html(r, args.html))
    if args.json:
        print(json.dumps(r, indent=2, ensure_ascii=False, default=str))
        return 0
    print(format_compare(r))
    print(f"\nwrote {r['html']}" if args.html else f"\nHTML page: {html_hint(args.runs)}")
    return 0
