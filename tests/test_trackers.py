"""`train --tracker mlflow|wandb`: a real MLflow tracking server on 127.0.0.1 (sqlite store)
gets the resolved configuration, every epoch's metrics, the test and calibration results and
the model, config.yaml and report as artifacts; a stopped run that is resumed continues the
same tracker run; wandb does the same offline. Nothing here needs the network."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from datagen import make_folder
from resnetlab.artifacts.run import RunDir
from resnetlab.cli.commands import main

pytest.importorskip("mlflow")
# Reports are made here from fresh runs: --backend auto measures PyTorch alone (conftest).
pytestmark = pytest.mark.usefixtures("auto_backend_measures_torch")

CLASSES = {"人参": 8, "当归": 8, "枸杞": 8}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free port of 127.0.0.1 with a sqlite store, started for this
    module and stopped after it."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(exe) if exe.exists() else "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(root / "server.log", "wb")  # noqa: SIM115  closed below
    # Without its job runner: six worker processes for GenAI jobs (none runs here) that start
    # beside the server and took a quarter of this module's time; tracking is the same.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(
                    "mlflow server did not start: "
                    + (root / "server.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module", autouse=True)
def _calibrate_small_validation_splits():
    """The runs here have a few dozen validation images, and what these tests check needs a
    fitted temperature: the minimum a fit takes (``MIN_CALIBRATION_IMAGES``, which keeps a real
    run from a temperature fitted on a handful of images) is lowered for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("resnetlab.train.calibration.MIN_CALIBRATION_IMAGES", 1)
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "herbs", CLASSES, size=(32, 32))


def _train(data, out, name, *flags):
    return main(
        [
            "train",
            "--data",
            str(data),
            "--model",
            "resnet20",
            "--model-kwargs",
            "widths=[4,8,8]",
            "--batch-size",
            "4",
            "--val-ratio",
            "0.25",
            "--test-ratio",
            "0.25",
            "--no-precise-bn",
            "--precision",
            "fp32",
            "--num-workers",
            "0",
            "--out",
            str(out),
            "--name",
            name,
            *flags,
        ]
    )


def test_mlflow_gets_params_metrics_results_and_artifacts_and_a_resume_continues(
    mlflow_server, data, tmp_path, capsys
):
    from mlflow.tracking import MlflowClient

    uri = mlflow_server
    flags = ("--tracker", "mlflow", "--tracker-uri", uri, "--tracker-project", "herbs")
    # 12 training images, batch 4: 3 steps an epoch; stopped in epoch 2
    assert _train(data, tmp_path, "r", "--epochs", "3", "--max-steps", "4", *flags) == 0
    run = RunDir(tmp_path / "r")
    record = json.loads(run.tracker.read_text(encoding="utf-8"))
    assert record["tracker"] == "mlflow" and record["tracking_uri"] == uri
    client = MlflowClient(uri)
    rid = record["run_id"]
    stopped = client.get_run(rid)
    assert stopped.info.status == "KILLED" and stopped.info.run_name == "r"
    assert [m.step for m in client.get_metric_history(rid, "val_top1")] == [1]
    assert main(["train", "--resume", str(run.path)]) == 0
    capsys.readouterr()
    assert json.loads(run.tracker.read_text(encoding="utf-8"))["run_id"] == rid  # the same run
    got = client.get_run(rid)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "herbs"
    # the resolved configuration as params
    config = run.read_config()
    params = got.data.params
    assert params["lr"] == str(config["lr"]) and params["epochs"] == "3"
    assert params["model"] == "resnet20" and params["model_kwargs.widths"] == "[4, 8, 8]"
    assert json.loads(params["classes"]) == list(CLASSES)
    # every epoch's metrics, once each, at its epoch
    history = run.read_metrics()
    val = client.get_metric_history(rid, "val_top1")
    assert [m.step for m in val] == [1, 2, 3]
    assert [m.value for m in val] == pytest.approx([r["val_top1"] for r in history], abs=1e-5)
    assert len(client.get_metric_history(rid, "train_loss")) == 3
    # the test and calibration results
    summary = run.read_summary()
    metrics = got.data.metrics
    for key in ("test_top1", "best_val_top1", "temperature", "ece_before", "ece_after"):
        assert metrics[key] == pytest.approx(summary[key])
    # the model, config.yaml and report as artifacts
    top = {a.path for a in client.list_artifacts(rid)}
    assert {
        "config.yaml",
        "summary.json",
        "metrics.csv",
        "calibration.json",
        "model",
        "report",
    } <= top
    assert {a.path for a in client.list_artifacts(rid, "model")} == {
        "model/model.safetensors",
        "model/model.json",
    }
    assert [a.path for a in client.list_artifacts(rid, "report")] == ["report/report.html"]
    local = Path(client.download_artifacts(rid, "config.yaml", str(tmp_path / "dl")))
    assert local.read_text(encoding="utf-8") == run.config.read_text(encoding="utf-8")
    weights = client.download_artifacts(rid, "model/model.safetensors", str(tmp_path / "dl"))
    assert Path(weights).read_bytes() == run.weights.read_bytes()


def test_a_failed_run_is_failed_in_mlflow(mlflow_server, data, tmp_path):
    from mlflow.tracking import MlflowClient

    from resnetlab.train import Trainer, resolve_config

    cfg = resolve_config(
        dict(
            data=str(data),
            model_kwargs={"widths": [4, 8, 8]},
            epochs=2,
            batch_size=4,
            num_workers=0,
            precise_bn=False,
            out=str(tmp_path),
            name="f",
            tracker="mlflow",
            tracker_uri=mlflow_server,
        )
    )

    def boom(row):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Trainer(cfg, verbose=False).fit(on_epoch_end=boom)
    rid = json.loads(RunDir(tmp_path / "f").tracker.read_text(encoding="utf-8"))["run_id"]
    assert MlflowClient(mlflow_server).get_run(rid).info.status == "FAILED"


def test_an_unreachable_server_is_one_line_before_training(data, tmp_path, capsys):
    port = _free_port()  # nobody listens there
    assert (
        _train(
            data,
            tmp_path,
            "x",
            "--epochs",
            "1",
            "--tracker",
            "mlflow",
            "--tracker-uri",
            f"http://127.0.0.1:{port}",
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"no tracking server answers at http://127.0.0.1:{port}" in err
    assert not RunDir(tmp_path / "x").last_checkpoint.exists()


@pytest.mark.parametrize("package,tracker", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_package_names_the_extra(package, tracker, data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    assert _train(data, tmp_path, "m", "--epochs", "1", "--tracker", tracker) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--tracker {tracker} needs the {package} package" in err
    assert "pip install 'resnetlab[tracking]'" in err


@pytest.mark.slow  # three wandb processes start and stop
def test_wandb_offline_logs_the_run_and_a_resume_continues_it(data, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    flags = ("--tracker", "wandb", "--tracker-project", "herbs")
    assert _train(data, tmp_path, "w", "--epochs", "2", "--max-steps", "4", *flags) == 0
    run = RunDir(tmp_path / "w")
    record = json.loads(run.tracker.read_text(encoding="utf-8"))
    assert record["tracker"] == "wandb" and record["mode"] == "offline"
    assert main(["train", "--resume", str(run.path)]) == 0
    capsys.readouterr()
    again = json.loads(run.tracker.read_text(encoding="utf-8"))
    assert again["run_id"] == record["run_id"]  # the same wandb run, resumed
    # wandb's service process writes the offline files; its teardown waits until they are
    # whole (the report's file was sometimes read before its artifact record was written)
    import wandb

    from wandb_records import run_log

    wandb.teardown()
    files = sorted((run.path / "wandb").glob(f"offline-run-*-{record['run_id']}/run-*.wandb"))
    # one offline file per process, all of one run id (wandb sync joins them): the stopped
    # start, the resumed end, and the report added after it
    logs = [run_log(f) for f in files]
    assert len(logs) == 3
    first, resumed, report = logs
    # the folders are named by the run id
    assert first["run_id"] == resumed["run_id"] == record["run_id"]
    assert json.loads(first["config"]["model_kwargs.widths"]) == "[4, 8, 8]"
    assert json.loads(first["config"]["model"]) == "resnet20"
    history = run.read_metrics()
    rows = [h for x in logs for h in x["history"]]
    assert [h["_step"] for h in rows] == [1, 2]
    assert [h["val_top1"] for h in rows] == pytest.approx(
        [r["val_top1"] for r in history], abs=1e-5
    )
    summary = run.read_summary()
    for key in ("test_top1", "temperature", "ece_after", "best_val_top1"):
        assert resumed["summary"][key] == pytest.approx(summary[key])
    assert {"model/model.safetensors", "model/model.json", "config.yaml"} <= set(
        resumed["artifacts"]
    )
    assert report["artifacts"] == ["report/report.html"]
