"""Degradation study and hyper-parameter search on tiny settings."""

import json

import pytest
import yaml

from datagen import make_folder
from resnetlab.cli.commands import main
from resnetlab.experiments.degradation import _verdict, run_degradation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Narrow nets on 72 small photos (3 classes): a run takes a fraction of a second, where
    the 1,259 training digits took seconds, and nothing checked here depends on the data."""
    data = make_folder(tmp_path_factory.mktemp("photos"), {"a": 24, "b": 24, "c": 24}, (32, 32))
    return {
        "data": str(data),
        "model_kwargs": {"widths": [4, 8, 8]},
        "batch_size": 64,
        "num_workers": 0,
    }


def test_degradation_files_and_numbers(tmp_path, tiny):
    out = tmp_path / "deg"
    r = run_degradation(
        data=tiny["data"], depths=(20, 32), epochs=2, out=out, overrides=tiny, verbose=False
    )
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


def test_tune_resumes_without_repeating_and_best_yaml_trains(tmp_path, capsys, tiny):
    out = tmp_path / "tune"
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny))
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
    assert (
        main(
            [
                "train",
                "--config",
                str(out / "best.yaml"),
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "runs"),
                "--name",
                "best",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "runs" / "best" / "model.safetensors").is_file()


def _study_trials(out):
    import optuna

    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    return optuna.load_study(study_name="resnetlab-tune", storage=storage).trials


def test_tune_continued_study_samples_new_points_and_skips_duplicates(tmp_path, tiny):
    from resnetlab.experiments.tune import run_tune

    out = tmp_path / "tune"
    base = {**tiny, "epochs": 1}
    run_tune(base, trials=2, out=out, verbose=False)
    # A restarted sampler with the same seed would draw trial 0's point again.
    run_tune(base, trials=3, out=out, verbose=False)
    trials = _study_trials(out)
    assert [t.state.name for t in trials].count("FAIL") == 0
    assert trials[2].params not in [t.params for t in trials[:2]]
    # A finished point proposed again (here: queued) is skipped, not trained or counted.
    import optuna

    study = optuna.load_study(study_name="resnetlab-tune", storage=f"sqlite:///{out}/study.db")
    study.enqueue_trial(trials[0].params)
    r = run_tune(base, trials=4, out=out, verbose=False)
    trials = _study_trials(out)
    skipped = [t for t in trials if t.user_attrs.get("duplicate_of") is not None]
    assert [t.user_attrs["duplicate_of"] for t in skipped] == [0]
    assert skipped[0].state.name == "FAIL" and not (out / f"trial-{skipped[0].number:03d}").exists()
    assert r["trials"]["COMPLETE"] + r["trials"]["PRUNED"] == 4


def test_tune_continued_study_keeps_its_settings(tmp_path, capsys, tiny):
    from resnetlab.experiments.tune import run_tune

    out = tmp_path / "tune"
    run_tune({**tiny, "epochs": 1}, trials=1, out=out, verbose=False)
    with pytest.raises(ValueError, match=r"run with epochs 1, not 2; continue it with --epochs 1"):
        run_tune({**tiny, "epochs": 2}, trials=2, out=out, verbose=False)
    with pytest.raises(ValueError, match=r"run with model 'resnet20', not 'resnet32'"):
        run_tune({**tiny, "model": "resnet32"}, trials=2, out=out, verbose=False)
    assert len(_study_trials(out)) == 1  # refused before any trial ran
    # Not given (None, as the CLI passes flags left out): the study's own settings.
    base = {**tiny, "data": None, "model": None, "epochs": None}
    r = run_tune(base, trials=2, out=out, verbose=False)
    assert r["trials"]["COMPLETE"] + r["trials"]["PRUNED"] == 2
    for n in (0, 1):
        cfg = yaml.safe_load((out / f"trial-{n:03d}" / "config.yaml").read_text())
        assert (cfg["epochs"], cfg["model"]) == (1, "resnet20")
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["epochs"] == 1 and best["lr"] == r["best_params"]["lr"]
    # The CLI prints the refusal as one line.
    argv = ["tune", "--epochs", "3", "--trials", "2", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "this study was run with epochs 1, not 3" in err
