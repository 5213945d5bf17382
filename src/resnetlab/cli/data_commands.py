"""The commands about models and data before training: ``models``, ``summary``, ``stats``,
``audit``, ``shard``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..core.errors import ConfigError
from ..core.fmt import shell_command
from .registry import command


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
            raise ConfigError(
                f"--v1: {args.model} has no bottleneck blocks (v1 and v1.5 differ "
                "only in where a bottleneck strides)"
            )
        model = create_model(
            args.model, num_classes=args.num_classes, in_chans=size[0], stride_in_1x1=True
        )
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
            source = load_source(
                args.data,
                val_ratio=args.val_ratio,
                test_ratio=args.test_ratio,
                seed=args.seed,
                download=args.download,
                channels=args.in_chans,
                max_bad_fraction=1.0,
                task=args.task,
                check=False,
            )
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

    for flag, path in (
        ("--write-exclude", args.write_exclude),
        ("--write-relabel", args.write_relabel),
    ):
        if path and os.path.exists(path):  # said before the work, not after it
            raise ConfigError(
                f"{flag} {path}: the file exists; give a new name (nothing is overwritten)"
            )
    if args.write_relabel and not (args.labels or args.oof):
        raise ConfigError("--write-relabel writes the label issues: add --labels")
    result = audit(
        args.data,
        val_ratio=args.val_ratio,
        test_ratio=args.test_ratio,
        seed=args.seed,
        channels=args.in_chans,
        download=args.download,
        task=args.task,
        near=not args.exact_only,
        labels=args.labels,
        run=args.run,
        oof=args.oof,
        folds=args.folds,
    )
    written: dict[str, str] = {}
    notes = []
    if args.write_exclude:
        path, n = write_exclude_file(result, args.write_exclude)
        written["exclude"] = str(path)
        notes.append(f"wrote {path} ({n} image(s) to leave out)")
    if args.write_relabel:
        path, n = write_relabel_file(result, args.write_relabel)
        written["relabel"] = str(path)
        notes.append(
            f"wrote {path} ({n} suggested label(s): check the label column, edit it, "
            "delete the rows to keep as they are)"
        )
    if args.html:
        from ..audit.page import write_page

        notes.append(f"wrote {write_page(result, args.html)}")
    report = result.report
    if args.json:
        print(json.dumps(public(report), indent=2, ensure_ascii=False))
    else:
        print(format_audit(report))
    found_by = (
        ["--oof", args.oof]
        if args.oof
        else ["--labels"] * args.labels + (["--run", args.run] if args.run and args.labels else [])
    )
    steps = next_steps(report, args.data, written, found_by)
    if not args.html and not args.json:
        steps.append(
            shell_command("resnetlab", "audit", args.data, *found_by, "--html", "audit.html")
        )
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
        args.data,
        val_ratio=args.val_ratio,
        test_ratio=args.test_ratio,
        seed=args.seed,
        download=args.download,
        channels=args.in_chans,
        max_bad_fraction=args.max_bad_fraction,
    )
    index = write_shards(source, args.out, shard_size_bytes=size, seed=args.seed)
    print(format_index(index, args.out))
    return 0
