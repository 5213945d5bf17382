"""Degradation study and hyper-parameter search on tiny settings."""

import json

import pytest
import yaml

from resnetlab.cli import main
from resnetlab.experiments.degradation import _verdict, run_degradation

TINY = {"model_kwargs": {"widths": [4, 8, 8]}, "batch_size": 64, "num_workers": 0}


def test_degradation_files_and_numbers(tmp_path):
    out = tmp_path / "deg"
    r = run_degradation(depths=(20, 32), epochs=2, out=out, overrides=TINY, verbose=False)
    for name in ("degradation.png", "results.json", "results.csv", "summary.md"):
        assert (out / name).is_file(), name
    table = {(row["kind"], row["depth"]): row for row in r["table"]}
    assert set(table) == {("plain", 20), ("residual", 20), ("plain", 32), ("residual", 32)}
    # Plain twins have exactly the residual nets' parameters (option-A shortcuts).
    assert table[("plain", 20)]["params"] == table[("residual", 20)]["params"]
    for run in r["runs"]:
        summary = json.loads((out / f"{run['model']}-seed0" / "summary.json").read_text())
        metrics = (out / f"{run['model']}-seed0" / "metrics.csv").read_text().splitlines()
        last = dict(zip(metrics[0].split(","), metrics[-1].split(",")))
        assert run["train_error"][-1] == pytest.approx(1 - float(last["train_top1"]), abs=1e-5)
        assert run["test_error"] == pytest.approx(1 - summary["test_top1"])
    md = (out / "summary.md").read_text()
    assert r["verdict"]["text"] in md and "| plain32 | 32 |" in md


def test_verdict_logic():
    rows = [
        {"kind": "plain", "depth": 20, "final_train_error": 0.05},
        {"kind": "plain", "depth": 56, "final_train_error": 0.09},
        {"kind": "residual", "depth": 20, "final_train_error": 0.04},
        {"kind": "residual", "depth": 56, "final_train_error": 0.03},
    ]
    v = _verdict(rows, (20, 56))
    assert v["plain_degraded"] is True and v["residual_degraded"] is False
    assert "degradation problem" in v["text"] and "did not train worse" in v["text"]


def test_degradation_rejects_unknown_depth(tmp_path):
    with pytest.raises(ValueError, match="plain twins exist"):
        run_degradation(depths=(18,), out=tmp_path / "x", verbose=False)


def test_tune_resumes_without_repeating_and_best_yaml_trains(tmp_path, capsys):
    out = tmp_path / "tune"
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**TINY, "batch_size": 64}))
    argv = ["tune", "--epochs", "1", "--out", str(out), "--config", str(base)]
    assert main([*argv, "--trials", "2"]) == 0
    import optuna

    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna.load_study(study_name="resnetlab-tune", storage=storage)
    assert len(study.trials) == 2
    first = [t.params for t in study.trials]
    assert main([*argv, "--trials", "3"]) == 0  # resumed: one more, the two kept
    study = optuna.load_study(study_name="resnetlab-tune", storage=storage)
    assert len(study.trials) == 3 and [t.params for t in study.trials[:2]] == first
    out_text = capsys.readouterr().out
    assert "2 finished trial(s)" in out_text and "running 1 more" in out_text
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["lr"] == study.best_trial.params["lr"]
    assert (out / "optimization_history.png").stat().st_size > 1000
    assert main(["train", "--config", str(out / "best.yaml"), "--epochs", "1", "--out",
                 str(tmp_path / "runs"), "--name", "best", "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "runs" / "best" / "model.safetensors").is_file()
