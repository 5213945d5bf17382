"""An ONNX export is tied to the weights it was made from: after the run's weights change
(``train --resume`` rewrites ``model.safetensors``), predict and serve never use the old one."""

import json
import os
import shutil

import onnx
import pytest
import torch

from datagen import make_folder
from resnetlab.artifacts.weights import save_bundle
from resnetlab.cli.commands import main
from resnetlab.core.errors import StaleExportError
from resnetlab.inference.export import WEIGHTS_KEY
from resnetlab.inference.loading import load_model
from resnetlab.inference.predict import Predictor
from resnetlab.train import Trainer, resolve_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stale")
    data = make_folder(root / "data", {"red": 10, "green": 10, "blue": 10}, size=(36, 36))
    cfg = resolve_config(
        dict(
            data=str(data),
            model="resnet20",
            model_kwargs={"widths": [4, 8, 8]},
            input_size=32,
            epochs=1,
            batch_size=8,
            out=str(root / "runs"),
            name="r",
            num_workers=0,
            val_ratio=0.2,
            test_ratio=0.2,
        )
    )
    Trainer(cfg, verbose=False).fit()
    return root / "runs" / "r", sorted(str(p) for p in data.rglob("*.png"))[::7]


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the run for one test to change."""
    run_dir, files = trained
    shutil.copytree(run_dir, tmp_path / "r")
    return tmp_path / "r", files


def _change_weights(run_dir) -> None:
    """Other weights in RUN/model.safetensors, written as training writes them."""
    loaded = load_model(run_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    save_bundle(loaded.model, loaded.meta, run_dir)


def _probs(rows) -> dict:
    return {(r["path"], t["index"]): t["prob"] for r in rows for t in r["topk"]}


def _max_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) for k in a)


def test_stale_run_export_is_rebuilt_and_announced(run, capsys, caplog):
    run_dir, files = run
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    old = _probs(Predictor(run_dir, backend="onnx").predict_paths(files, topk=3))
    _change_weights(run_dir)
    new = _probs(Predictor(run_dir, backend="torch", precision="fp32").predict_paths(files, topk=3))
    assert _max_diff(old, new) > 1e-3  # the change is visible in the outputs
    capsys.readouterr()
    caplog.clear()
    assert (
        main(["predict", str(run_dir), *files, "--backend", "onnx", "--json", "--topk", "3"]) == 0
    )
    got = _probs(json.loads(capsys.readouterr().out))
    assert _max_diff(got, new) < 1e-4
    assert [r.getMessage() for r in caplog.records if r.name == "resnetlab.predict"] == [
        f"{run_dir / 'model.onnx'} was exported from other weights than "
        f"{run_dir / 'model.safetensors'} holds now; exporting it again"
    ]
    # The rebuilt file carries the new weights' fingerprint: used as it is from now on.
    caplog.clear()
    Predictor(run_dir, backend="onnx")
    assert not [r for r in caplog.records if r.name == "resnetlab.predict"]


def test_stale_int8_and_out_files_are_refused_and_left_alone(run, tmp_path, capsys):
    run_dir, files = run
    assert main(["export", str(run_dir), "--int8", "--calibration", "8"]) == 0
    out = tmp_path / "elsewhere" / "m.onnx"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    Predictor(run_dir, backend="onnx-int8")  # current: accepted
    Predictor(run_dir, backend="onnx", onnx_path=out)
    before = {p: p.read_bytes() for p in (run_dir / "model.int8.onnx", out)}
    _change_weights(run_dir)
    with pytest.raises(StaleExportError, match="re-run `resnetlab export .* --out .*m.onnx`"):
        Predictor(run_dir, backend="onnx", onnx_path=out)
    capsys.readouterr()
    assert main(["predict", str(run_dir), files[0], "--backend", "onnx-int8"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"resnetlab predict: error: {run_dir / 'model.int8.onnx'} was exported from other "
        f"weights than {run_dir / 'model.safetensors'} holds now; re-run "
        f"`resnetlab export {run_dir} --format onnx --int8`\n"
    )
    assert {p: p.read_bytes() for p in before} == before


def test_export_without_fingerprint_is_judged_by_age(run, caplog):
    """Files exported before the fingerprint was stored: older than the weights means stale."""
    run_dir, files = run
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    path = run_dir / "model.onnx"
    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != WEIGHTS_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    weights_time = (run_dir / "model.safetensors").stat().st_mtime
    os.utime(path, (weights_time + 10, weights_time + 10))
    caplog.clear()
    Predictor(run_dir, backend="onnx")  # newer than the weights: used as it is
    assert not [r for r in caplog.records if r.name == "resnetlab.predict"]
    os.utime(path, (weights_time - 10, weights_time - 10))
    Predictor(run_dir, backend="onnx")
    assert [r.getMessage() for r in caplog.records if r.name == "resnetlab.predict"] == [
        f"{path} is older than {run_dir / 'model.safetensors'}; exporting it again"
    ]
    assert WEIGHTS_KEY in {p.key for p in onnx.load(str(path)).metadata_props}
