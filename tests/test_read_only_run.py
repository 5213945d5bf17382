"""A run folder that cannot be written (a read-only bind mount, as Docker and Kaggle give a
model folder) is used as it is: predict, serve, evaluate, report and explain work; the caches
(backend.json, the ONNX export, openvino-cache/) go to the user's cache folder, keyed by the
weights; outputs go where --out says, and without it the error says so in one line."""

import json
import os

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from resnetlab.cli.commands import main
from resnetlab.inference import choice as backend_choice
from resnetlab.inference.predict import Predictor
from resnetlab.serve.app import create_app


@pytest.fixture
def quick(monkeypatch):
    """--backend auto measures torch and onnx (which needs an export, the file a read-only run
    cannot take), with fixed speeds instead of the clock: onnx is chosen."""
    monkeypatch.setattr(
        backend_choice,
        "candidates",
        lambda device, precision="auto": [("torch", "fp32"), ("onnx", "fp32")],
    )
    monkeypatch.setattr(
        backend_choice,
        "_images_per_second",
        lambda runs, seconds: [{"torch": 1.0, "onnx": 2.0}[b.name] for b, _ in runs],
    )


@pytest.fixture
def ro(trained_run, read_only, quick):
    return read_only(trained_run)


def _cache_files():
    models = os.path.join(os.environ["XDG_CACHE_HOME"], "resnetlab", "models")
    return {os.path.relpath(os.path.join(d, f), models) for d, _, fs in os.walk(models) for f in fs}


def _image(tmp_path, value=90):
    path = tmp_path / f"x{value}.png"
    Image.new("L", (32, 32), value).save(path)
    return path


def test_predict_caches_in_the_users_cache_folder(ro, trained_run, tmp_path, capsys):
    before = sorted(os.listdir(trained_run))
    image = _image(tmp_path)
    assert main(["predict", str(ro), str(image), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["error"] is None
    key = {p.split(os.sep)[0] for p in _cache_files()}
    assert len(key) == 1 and {"backend.json", "model.onnx"} <= {
        p.split(os.sep, 1)[1] for p in _cache_files()
    }
    assert "backend onnx fp32" in err and f"{ro} cannot be written" in err
    assert sorted(os.listdir(trained_run)) == before  # nothing written into the run
    # The second time: measured once, cached; the same answer.
    assert main(["predict", str(ro), str(image), "--json"]) == 0
    again, err = capsys.readouterr()
    assert again == out and "measured once, cached" in err


def test_nowhere_to_cache_runs_torch_and_says_why(ro, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro / "cache"))  # read-only too
    assert main(["predict", str(ro), str(_image(tmp_path))]) == 0
    err = capsys.readouterr().err
    assert "backend torch" in err and "not measured" in err and "can be written" in err


def test_serve_answers_from_a_read_only_run(ro, tmp_path):
    predictor = Predictor(ro, precision="fp32")
    assert predictor.backend.name == "onnx"
    with TestClient(create_app(predictor)) as client:
        assert client.get("/health").status_code == 200
        r = client.post(
            "/predict", content=_image(tmp_path).read_bytes(), headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["topk"]) == 5


def test_evaluate_needs_out_and_then_works(ro, tmp_path, capsys):
    assert main(["evaluate", str(ro)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"resnetlab evaluate: error: {ro / 'eval-test'} cannot be written (Read-only "
        "file system): give --out DIR for the evaluation files"
    )
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(ro), "--out", str(out), "--backend", "torch"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert {"metrics.json", "confusion_matrix.png"} <= set(os.listdir(out))


def test_report_and_explain_need_out_and_then_work(ro, tmp_path, capsys):
    image = str(_image(tmp_path))
    for argv in (["report", str(ro)], ["explain", str(ro), image], ["export", str(ro)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "cannot be written (Read-only file system): give --out" in err
    assert main(["report", str(ro), "--out", str(tmp_path / "report"), "--top-losses", "2"]) == 0
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    assert main(["explain", str(ro), image, "--out", str(tmp_path / "cams")]) == 0
    assert len(os.listdir(tmp_path / "cams")) == 1
