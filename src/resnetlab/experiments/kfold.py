"""k-fold cross-validation (``--folds K``): K stratified runs under one parent folder.

The images of the training and validation splits are pooled and dealt into K folds, class by
class (so each fold holds every class in proportion); run ``k`` validates on fold ``k`` and
trains on the others. A test split the data has (or carves with --test-ratio) is kept out of
every fold and tests every run. Each run is a normal run folder, ``OUT/fold-K``, trained from
a ``csv:`` list of its files, so ``predict``, ``evaluate`` and ``report`` take any of them.

Resumable like ``tune``'s trials: a fold with a summary.json is finished and kept; a fold
stopped midway continues from its last checkpoint; the others start. ``OUT/kfold.json`` holds
every fold's summary, the mean ± std of every metric, and the best fold; ``OUT/oof.csv`` each
pooled image's calibrated probabilities from the run that held it out (out-of-fold: what
``resnetlab audit DATA --oof OUT/oof.csv`` ranks likely wrong labels with).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from ..artifacts.run import RunDir
from ..core.errors import ConfigError
from ..core.files import atomic_write_text
from ..data import load_source
from ..data.sources import label_counts, strata
from ..train import Trainer
from ..train.config import TrainConfig

SUMMARY = "kfold.json"
OOF = "oof.csv"  # each pooled image's probabilities from the fold run that held it out
# The per-fold numbers averaged (those a fold's summary.json has).
METRICS = (
    "best_val_top1",
    "test_top1",
    "test_top5",
    "ece_before",
    "ece_after",
    "temperature",
    "best_val_map",
    "test_map",
    "test_f1_micro",
    "test_f1_macro",
    "test_exact_match",
    "train_seconds",
)


def fold_assignment(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """The fold (0..K-1) of each sample: each class shuffled with ``seed`` and dealt round
    robin, so every fold holds each class's images in proportion (±1). Multi-hot rows are
    dealt by their rarest label (``data.sources.strata``)."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"--folds must be a whole number of at least 2, got {folds!r}")
    g = torch.Generator().manual_seed(seed)
    labels = strata(labels)
    out = torch.empty(len(labels), dtype=torch.long)
    start = 0  # each class starts dealing where the last one stopped: folds stay even in size
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        out[idx] = (torch.arange(len(idx)) + start) % folds
        start += len(idx)
    return out


def write_fold_lists(cfg: TrainConfig, folds: int, out: Path) -> list[Path]:
    """``OUT/fold-K.csv`` (path,label,split) for each fold; returns their paths."""
    source = load_source(
        cfg.data,
        val_ratio=0.0,
        test_ratio=cfg.test_ratio,
        seed=cfg.seed,
        channels=cfg.in_chans,
        max_bad_fraction=cfg.max_bad_fraction,
        task=cfg.task,
    )
    pooled = [s for name, s in source.splits.items() if name != "test"]
    if any(s.paths is None or s.streamed for s in pooled + list(source.splits.values())):
        raise ConfigError(
            f"--folds needs image files to deal into folds (a folder or csv:FILE); "
            f"{cfg.data} is held in memory or streamed"
        )
    paths = [p for s in pooled for p in s.paths]
    labels = torch.cat([s.labels for s in pooled])
    counts = label_counts(labels, len(source.classes)).tolist()
    small = [c for c, n in zip(source.classes, counts) if n < folds]
    if small:
        raise ConfigError(
            f"--folds {folds}: class(es) {', '.join(small[:5])} have fewer than {folds} images "
            "to train and validate on; use fewer folds"
        )
    fold = fold_assignment(labels, folds, cfg.seed)
    test = source.splits.get("test")
    out.mkdir(parents=True, exist_ok=True)
    lists = []

    task = source.task

    def text(y: torch.Tensor) -> str:  # a class name, or the labels of a multi-hot row
        return task.label_text(y, source.classes)

    for k in range(folds):
        rows = [["path", task.label_column, "split"]]
        rows += [
            [str(Path(p).resolve()), text(y), "val" if f == k else "train"]
            for p, y, f in zip(paths, labels, fold.tolist())
        ]
        if test is not None:
            rows += [
                [str(Path(p).resolve()), text(y), "test"] for p, y in zip(test.paths, test.labels)
            ]
        target = out / f"fold-{k}.csv"
        with open(target, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
        lists.append(target)
    return lists


def _mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    mean = sum(values) / len(values)
    # Sample std (n - 1), as cross-validation results are usually reported.
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var)}


def summarize_folds(summaries: list[dict], out: Path) -> dict:
    """Mean ± std of every metric over the folds, and the best fold (highest val top-1)."""
    metrics = {
        m: {**_mean_std([s[m] for s in summaries if isinstance(s.get(m), (int, float))])}
        for m in METRICS
        if any(isinstance(s.get(m), (int, float)) for s in summaries)
    }
    # Highest val top-1 (multi-label: val mAP).
    ranked = [
        (s.get("best_val_map") or s.get("best_val_top1") or 0.0, -k)
        for k, s in enumerate(summaries)
    ]
    best = -max(ranked)[1]
    return {
        "folds": len(summaries),
        "metrics": metrics,
        "best_fold": best,
        "best_run": str(out / f"fold-{best}"),
        "runs": [str(out / f"fold-{k}") for k in range(len(summaries))],
        "per_fold": summaries,
    }


def kfold_folder(cfg: TrainConfig, folds: int) -> Path:
    """The parent folder of a k-fold study: --name, else model-data-Kfold (no time stamp, so
    the same command finds and resumes it)."""
    tag = Path(cfg.data.split(":")[-1]).name or "data"
    return Path(cfg.out) / (cfg.name or f"{cfg.model}-{tag}-{folds}fold")


def held_out_probabilities(run: str | Path) -> tuple[list[str], list[str], torch.Tensor, list]:
    """The best weights of a fold's run on its validation split (the held-out fold): paths,
    given labels (names; multi-label: joined by |), calibrated probabilities (softmax at the
    run's temperature; multi-label: the sigmoids), and the class names."""
    from ..inference.loading import load_model, run_pipeline
    from ..tasks import task_of

    loaded = load_model(run)
    pipe = run_pipeline(loaded, num_workers=0)  # the fold's own list, split as it trained
    split = pipe.source.splits["val"]
    loader, tf = pipe.split_loader("val", channels_last=False)
    model = loaded.model.eval()
    logits = []
    with torch.inference_mode():
        for x, _ in loader:
            logits.append(model(tf(x)).float())
    out = torch.cat(logits) if logits else torch.zeros(0, len(loaded.classes))
    task = task_of(loaded.meta)
    probs = task.probabilities(out, loaded.meta.temperature)
    given = [task.label_text(y, pipe.classes) for y in split.labels]
    # The model's columns are its classes; the data's are the same names (checked on loading).
    index = [loaded.classes.index(c) for c in pipe.classes]
    return [str(p) for p in split.paths], given, probs[:, index], list(pipe.classes)


def write_oof(out: Path, folds: int) -> Path:
    """``OUT/oof.csv``: every pooled image once, with the probabilities of the fold run that
    held it out (``resnetlab audit DATA --oof OUT/oof.csv`` ranks its likely wrong labels)."""
    from ..audit.labels import write_oof as write

    rows, classes = [], None
    for k in range(folds):
        paths, given, probs, names = held_out_probabilities(out / f"fold-{k}")
        classes = classes or names
        rows += [(p, g, k, row) for p, g, row in zip(paths, given, probs.numpy())]
    return write(out / OOF, rows, classes or [])


def run_kfold(cfg: TrainConfig, folds: int, out: str | Path, verbose: bool = True) -> dict:
    """Train (or finish) the K fold runs of ``cfg`` under ``out``; write and return the
    summary. ``cfg.out`` and ``cfg.name`` are replaced by ``out/fold-K``."""
    out = Path(out)
    lists = write_fold_lists(cfg, folds, out)
    summaries = []
    for k, listing in enumerate(lists):
        run = RunDir(out / f"fold-{k}")
        if run.summary.is_file():  # finished: kept as it is
            summaries.append(run.read_summary())
            continue
        if run.last_checkpoint.is_file():  # stopped midway: continue it
            trainer = Trainer(resume=run.path, verbose=verbose, overrides={})
        else:
            fold_cfg = replace(cfg, data=f"csv:{listing}", out=str(out), name=run.name)
            trainer = Trainer(fold_cfg, verbose=verbose)
        summaries.append(trainer.fit())
    result = summarize_folds(summaries, out)
    result["oof"] = str(write_oof(out, folds))
    atomic_write_text(out / SUMMARY, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result
