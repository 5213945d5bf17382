"""`resnetlab runs` and `resnetlab compare`: every run of a folder as one table (finished,
stopped, failed, killed and running runs told apart, sorted, filtered, as JSON and CSV) and
runs side by side (settings that differ, metrics, curves, per-class differences) in the
terminal and as one self-contained HTML page."""

import csv
import io
import json
import os
import shutil

import pytest

from datagen import make_folder
from resnetlab.analysis.report.compare import compare_runs, sparkline
from resnetlab.analysis.report.runs import list_runs, parse_filter
from resnetlab.artifacts.run import RunDir
from resnetlab.cli.commands import main
from resnetlab.core.files import FolderLock
from resnetlab.train import RunStopped, Trainer, resolve_config

CLASSES = {"人参": 8, "当归": 8, "枸杞 子": 8}


@pytest.fixture(scope="module", autouse=True)
def _calibrate_small_validation_splits():
    """The runs here have a few dozen validation images, and what these tests check needs a
    fitted temperature: the minimum a fit takes (``MIN_CALIBRATION_IMAGES``, which keeps a real
    run from a temperature fitted on a handful of images) is lowered for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("resnetlab.train.calibration.MIN_CALIBRATION_IMAGES", 1)
        yield


@pytest.fixture(scope="module")
def herbs(tmp_path_factory):
    """Tiny runs on a folder of three Chinese-named classes: two finished (different lr and
    optimizer), one stopped by --max-steps, one failed by an error in its epoch callback."""
    root = tmp_path_factory.mktemp("runs")
    data = make_folder(root / "data", CLASSES, size=(32, 32))
    base = dict(
        data=str(data),
        model="resnet20",
        model_kwargs={"widths": [4, 8, 8]},
        epochs=2,
        batch_size=8,
        num_workers=0,
        precise_bn=False,
        val_ratio=0.25,
        test_ratio=0.25,
        out=str(root / "runs"),
        precision="fp32",
    )
    Trainer(resolve_config(dict(base, name="sgd", lr=0.05)), verbose=False).fit()
    Trainer(
        resolve_config(dict(base, name="adamw", optimizer="adamw", lr=0.003, epochs=3)),
        verbose=False,
    ).fit()
    with pytest.raises(RunStopped):
        Trainer(resolve_config(dict(base, name="stopped", max_steps=1)), verbose=False).fit()

    def boom(row):
        raise RuntimeError("the disk of the metrics server is full")

    with pytest.raises(RuntimeError):
        Trainer(resolve_config(dict(base, name="failed")), verbose=False).fit(on_epoch_end=boom)
    return root / "runs"


def _rows(folder, *args, capsys):
    assert main(["runs", str(folder), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_runs_tells_finished_stopped_and_failed_apart(herbs, capsys):
    rows = {r["name"]: r for r in _rows(herbs, capsys=capsys)}
    assert set(rows) == {"sgd", "adamw", "stopped", "failed"}
    sgd, adamw = rows["sgd"], rows["adamw"]
    assert sgd["state"] == adamw["state"] == "finished"
    assert (sgd["epochs_done"], sgd["epochs_planned"]) == (2, 2)
    assert (adamw["epochs_done"], adamw["epochs_planned"]) == (3, 3)
    summary = RunDir(herbs / "sgd").read_summary()
    assert sgd["best_val"] == summary["best_val_top1"]
    assert sgd["test"] == summary["test_top1"]
    assert sgd["temperature"] == pytest.approx(summary["temperature"])
    assert sgd["model"] == "resnet20" and sgd["task"] == "multiclass"
    assert sgd["train_seconds"] > 0 and sgd["date"][:2] == "20"
    assert rows["stopped"]["state"] == "stopped"
    assert "max-steps" in rows["stopped"]["reason"]
    assert (rows["stopped"]["epochs_done"], rows["stopped"]["epochs_planned"]) == (1, 2)
    assert rows["failed"]["state"] == "failed"
    assert "RuntimeError: the disk of the metrics server is full" in rows["failed"]["reason"]


def test_runs_table_names_every_column_and_why_a_run_failed(herbs, capsys):
    assert main(["runs", str(herbs)]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0].split()
    assert head == [
        "run",
        "model",
        "data",
        "task",
        "epochs",
        "best",
        "val",
        "test",
        "calibration",
        "time",
        "date",
        "state",
    ]
    assert "4 run(s): " in out and "2 finished" in out and "1 stopped" in out
    assert "failed: RuntimeError: the disk of the metrics server is full" in out
    assert "T " in out and "ECE " in out  # the calibration column


def test_a_held_lock_is_running_and_a_lock_left_behind_is_a_killed_run(herbs, tmp_path, capsys):
    running, killed = tmp_path / "r" / "running", tmp_path / "r" / "killed"
    shutil.copytree(herbs / "sgd", running)
    shutil.copytree(herbs / "stopped", killed)
    lock = FolderLock.acquire(RunDir(running).lock)
    (killed / RunDir.LOCK).write_text("999999999\n")  # no such process, nobody holds it
    try:
        rows = {r["name"]: r for r in _rows(tmp_path / "r", capsys=capsys)}
    finally:
        lock.release()
    assert rows["running"]["state"] == "running"
    assert rows["running"]["reason"] == f"process {os.getpid()}"
    assert rows["killed"]["state"] == "failed" and "killed" in rows["killed"]["reason"]
    assert "--resume" in rows["killed"]["reason"]
    rows = {r["name"]: r for r in _rows(tmp_path / "r", capsys=capsys)}
    assert rows["running"]["state"] == "finished"  # let go: the run is what it was


def test_runs_sorts_and_filters(herbs, capsys):
    names = [r["name"] for r in _rows(herbs, "--sort", "name", capsys=capsys)]
    assert names == sorted(names)
    assert [r["name"] for r in _rows(herbs, "--sort=-name", capsys=capsys)] == names[::-1]
    assert [r["name"] for r in _rows(herbs, "--sort", "name", "--reverse", capsys=capsys)] == names[
        ::-1
    ]
    # runs without the value (no test score) come last, whichever way
    for order in ("test", "-test"):
        rows = _rows(herbs, f"--sort={order}", capsys=capsys)
        assert [r["test"] is None for r in rows] == [False, False, True, True]
    finished = _rows(herbs, "--filter", "state=finished", capsys=capsys)
    assert {r["name"] for r in finished} == {"sgd", "adamw"}
    # a setting of config.yaml, a pattern, a number, contains
    assert [r["name"] for r in _rows(herbs, "--filter", "optimizer=adamw", capsys=capsys)] == [
        "adamw"
    ]
    assert len(_rows(herbs, "--filter", "model=resnet*", capsys=capsys)) == 4
    assert [r["name"] for r in _rows(herbs, "--filter", "lr>=0.01", capsys=capsys)] == ["sgd"]
    both = _rows(herbs, "--filter", "epochs>=2", "--filter", "state!=failed", capsys=capsys)
    assert {r["name"] for r in both} == {"sgd", "adamw"}
    assert {r["name"] for r in _rows(herbs, "--filter", "reason~DISK", capsys=capsys)} == {"failed"}


def test_runs_refuses_a_filter_or_sort_on_a_key_no_run_has(herbs, capsys):
    assert main(["runs", str(herbs), "--filter", "optimiser=adamw"]) == 2
    err = capsys.readouterr().err
    assert "no run has 'optimiser'" in err and len(err.strip().splitlines()) == 1
    assert main(["runs", str(herbs), "--sort", "colour"]) == 2
    assert "not a column" in capsys.readouterr().err
    assert main(["runs", str(herbs), "--filter", "test"]) == 2
    assert "KEY OP VALUE" in capsys.readouterr().err
    assert main(["runs", str(herbs / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_filter_values():
    row = {
        "name": "a",
        "test": 0.91,
        "state": "finished",
        "config": {"lr": 0.1, "nesterov": True, "milestones": [0.5, 0.75]},
    }
    assert parse_filter("test>90%")(row) and not parse_filter("test>=92%")(row)
    assert parse_filter("nesterov=true")(row) and parse_filter("lr=0.1")(row)
    assert parse_filter("milestones~0.75")(row)
    assert parse_filter("weights=none")({**row, "weights": None})
    assert parse_filter("state = FINISHED")(row)


def test_runs_csv_has_the_json_keys(herbs, capsys):
    assert main(["runs", str(herbs), "--csv", "--sort", "name"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == ["adamw", "failed", "sgd", "stopped"]
    assert rows[0]["state"] == "finished" and float(rows[0]["best_val"]) >= 0
    assert rows[1]["test"] == ""  # the failed run has no test score


def test_runs_finds_runs_below_the_folder_and_a_folder_that_is_a_run(herbs, tmp_path):
    shutil.copytree(herbs / "sgd", tmp_path / "study" / "fold-1")
    shutil.copytree(herbs / "adamw", tmp_path / "study" / "fold-2")
    names = [r["name"] for r in list_runs(tmp_path, sort="name")]
    assert names == [os.path.join("study", "fold-1"), os.path.join("study", "fold-2")]
    assert [r["name"] for r in list_runs(tmp_path / "study" / "fold-1")] == ["fold-1"]


def test_compare_shows_what_differs_side_by_side(herbs, capsys):
    assert main(["compare", str(herbs / "sgd"), str(herbs / "adamw")]) == 0
    out = capsys.readouterr().out
    settings = out.split("settings that differ")[1].split("metrics")[0]
    for key in ("optimizer", "lr", "epochs"):
        assert key in settings
    assert "batch_size" not in settings and "name" not in settings  # alike, or the place
    assert "best val top-1" in out and "test top-1" in out and "ECE after" in out
    assert "learning curves" in out and "per-class F1 on test" in out
    for name in CLASSES:
        assert name in out
    assert "--html compare.html" in out  # how to get the page


def test_compare_json_and_per_class_from_a_saved_evaluation(herbs, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(herbs / "sgd", a)
    shutil.copytree(herbs / "adamw", b)
    saved = RunDir(a).eval_dir("test")
    saved.mkdir()
    (saved / "metrics.json").write_text(
        json.dumps(
            {
                "split": "test",
                "f1_macro": 0.5,
                "per_class": {n: {"f1": 0.25, "recall": 0.5} for n in CLASSES},
            }
        ),
        encoding="utf-8",
    )
    assert main(["compare", str(a), str(b), "--json", "--no-evaluate"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["labels"] == ["a", "b"] and r["split"] == "test"
    assert r["settings"]["optimizer"] == ["sgd", "adamw"]
    assert r["per_class"]["人参"] == [0.25, None]  # b has no saved evaluation: not evaluated
    assert "run `resnetlab evaluate" in r["per_class_sources"]["b"]
    assert len(r["curves"]["b"]["epoch"]) == 3 and len(r["curves"]["a"]["val_score"]) == 2
    names = {m["name"]: m for m in r["metrics"]}
    assert names["test top-1"]["values"] == [
        RunDir(a).read_summary()["test_top1"],
        RunDir(b).read_summary()["test_top1"],
    ]
    assert names["test macro-F1"]["values"] == [0.5, None]


def test_compare_evaluates_runs_without_saved_evaluations_and_leaves_them_as_they_were(herbs):
    before = sorted(p.name for p in (herbs / "sgd").iterdir())
    r = compare_runs([herbs / "sgd", herbs / "adamw"], device="cpu")
    assert set(r["per_class"]) == set(CLASSES)
    assert all(v is not None for vs in r["per_class"].values() for v in vs)
    spreads = [max(vs) - min(vs) for vs in r["per_class"].values()]
    assert spreads == sorted(spreads, reverse=True)  # largest differences first
    assert sorted(p.name for p in (herbs / "sgd").iterdir()) == before


def test_compare_needs_two_runs_and_run_folders(herbs, tmp_path, capsys):
    assert main(["compare", str(herbs / "sgd")]) == 2
    assert "two or more runs" in capsys.readouterr().err
    assert main(["compare", str(herbs / "sgd"), str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_sparkline():
    assert sparkline([0.1, 0.5, 0.9]) == "▁▅█"
    assert sparkline([0.3, None, 0.3]) == "▁ ▁"
    assert sparkline([]) == ""


def test_compare_page_is_self_contained_and_renders_chinese_names(herbs, tmp_path, capsys):
    page_path = tmp_path / "compare.html"
    assert (
        main(
            [
                "compare",
                str(herbs / "sgd"),
                str(herbs / "adamw"),
                "--html",
                str(page_path),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert f"wrote {page_path}" in capsys.readouterr().out
    page = page_path.read_text(encoding="utf-8")
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert "https://" not in page and " src=" not in page  # nothing to fetch
    for name in CLASSES:
        assert name in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")
    from browser import chrome_driver

    with chrome_driver(1200, 1600) as driver:
        driver.get(page_path.as_uri())
        headings = [h.text for h in driver.find_elements("css selector", "h2")]
        assert headings == [
            "Runs",
            "Settings that differ",
            "Metrics",
            "Learning curves",
            "Per-class F1 on test",
            "Full settings",
        ]
        charts = driver.find_elements("css selector", "svg")
        assert len(charts) == 3
        assert all(c.size["width"] > 300 for c in charts)
        lines = driver.find_elements("css selector", "svg polyline")
        assert len(lines) >= 4  # two runs, val top-1 and both losses
        cells = [td.text for td in driver.find_elements("css selector", "#per-class td")]
        assert set(CLASSES) <= set(cells)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
