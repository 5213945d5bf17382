"""k-fold cross-validation: stratified folds, K normal run folders, mean ± std, resumable
after a fold is stopped midway, the best fold usable by predict."""

from __future__ import annotations

import json

import pytest
import torch

from datagen import make_folder
from resnetlab.core.errors import ConfigError
from resnetlab.experiments.kfold import SUMMARY, fold_assignment, run_kfold
from resnetlab.train import RunStopped
from resnetlab.train.config import TrainConfig

CLASSES = {"a": 9, "b": 9, "c": 6}


def _cfg(data, **kw) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        model="resnet20",
        model_kwargs={"widths": [4, 4, 4]},
        input_size=16,
        preset="small",
        epochs=1,
        batch_size=4,
        num_workers=0,
        test_ratio=0.0,
        warmup_epochs=0.0,
        **kw,
    )


def test_folds_are_stratified_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 3)
    f = fold_assignment(labels, 3, seed=1)
    for c in range(3):
        per_fold = torch.bincount(f[labels == c], minlength=3)
        assert int(per_fold.max() - per_fold.min()) <= 1
    assert torch.equal(f, fold_assignment(labels, 3, seed=1))
    assert not torch.equal(f, fold_assignment(labels, 3, seed=2))
    with pytest.raises(ConfigError, match="at least 2"):
        fold_assignment(labels, 1)


def test_three_folds_resume_after_one_is_stopped(tmp_path):
    torch.set_num_threads(1)
    data = make_folder(tmp_path / "data", CLASSES, size=(16, 16))
    out = tmp_path / "cv"
    # The first fold stops after 2 steps, as a killed process would, with its checkpoint.
    with pytest.raises(RunStopped):
        run_kfold(_cfg(data, max_steps=2), 3, out, verbose=False)
    assert (out / "fold-0" / "checkpoint-last.pt").is_file()
    assert not (out / "fold-0" / "summary.json").exists()
    r = run_kfold(_cfg(data), 3, out, verbose=False)
    assert r["folds"] == 3 and len(r["per_fold"]) == 3
    assert r["per_fold"][0]["epochs_completed"] == 1  # fold 0 was finished, not restarted
    m = r["metrics"]["best_val_top1"]
    vals = [s["best_val_top1"] for s in r["per_fold"]]
    assert m["mean"] == pytest.approx(sum(vals) / 3)
    saved = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    assert saved["best_run"] == r["best_run"]
    # Every image validated exactly once across the folds.
    rows = [
        line.split(",")
        for k in range(3)
        for line in (out / f"fold-{k}.csv").read_text().splitlines()[1:]
    ]
    val = sorted(r[0] for r in rows if r[2] == "val")
    assert len(val) == sum(CLASSES.values()) == len(set(val))
    # Finished folds are kept: a third call trains nothing.
    stamps = [(out / f"fold-{k}" / "summary.json").stat().st_mtime_ns for k in range(3)]
    run_kfold(_cfg(data), 3, out, verbose=False)
    assert stamps == [(out / f"fold-{k}" / "summary.json").stat().st_mtime_ns for k in range(3)]
    # The best fold is a normal run folder: predict takes it.
    from resnetlab.inference.predict import Predictor

    p = Predictor(r["best_run"], backend="torch", device="cpu", precision="fp32")
    row = p.predict_paths([next((data / "a").iterdir())], topk=1)[0]
    assert row["error"] is None and row["topk"][0]["label"] in CLASSES


def test_in_memory_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="image files"):
        run_kfold(TrainConfig(data="digits"), 3, tmp_path / "cv", verbose=False)
