"""A run stopped before its first epoch ended is usable from its last checkpoint; a temperature
is never fitted on too few validation images, nor left at its bound without a word."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.artifacts.run import RunDir
from resnetlab.cli.commands import main
from resnetlab.train import RunStopped, Trainer, calibration, resolve_config
from resnetlab.train.closing import closing_lines


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    root = tmp_path_factory.mktemp("stopped")
    cfg = resolve_config(
        dict(
            model="resnet20",
            model_kwargs={"widths": [4, 8, 8]},
            epochs=1,
            out=str(root),
            name="early",
            num_workers=0,
            precise_bn=False,
            max_steps=3,
        )
    )
    with pytest.raises(RunStopped):
        Trainer(cfg, verbose=False).fit()
    run = root / "early"
    assert not (run / "model.safetensors").exists() and (run / "checkpoint-last.pt").is_file()
    image = root / "digit.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(image)
    return run, image


def test_a_stopped_run_predicts_from_its_last_checkpoint(stopped, capsys, caplog):
    """Stopped by --max-steps in its first epoch: predict and evaluate use checkpoint-last.pt,
    with one line saying so, instead of "no model.safetensors; is it a run folder?"."""
    run, image = stopped
    assert main(["predict", str(run), str(image), "--json", "--backend", "torch"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["error"] is None and len(rows[0]["topk"]) == 5
    said = [r.getMessage() for r in caplog.records if "no epoch" in r.getMessage()]
    assert len(said) == 1
    assert "no epoch of this run has finished (it stopped at step 3 of epoch 1)" in said[0]
    assert "checkpoint-last.pt" in said[0] and "not calibrated" in said[0]
    assert main(["evaluate", str(run), "--json", "--backend", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 269


def test_a_damaged_finished_run_still_points_at_its_best_checkpoint(stopped, tmp_path, capsys):
    """The fallback is for a run with no epoch done; a run that has a best checkpoint but lost
    its model file keeps the error that names checkpoint-best.pt."""
    import shutil

    run, image = stopped
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    shutil.copy(copy / "checkpoint-last.pt", copy / "checkpoint-best.pt")
    assert main(["predict", str(copy), str(image)]) == 2
    assert "checkpoint-best.pt still holds" in capsys.readouterr().err


class _Data:
    """What calibrate_run reads before it runs the model: the splits and the classes."""

    def __init__(self, n):
        self.classes = [str(i) for i in range(10)]
        self.source = type("S", (), {"splits": {"val": [0] * n}})()


def test_calibration_on_few_images_is_skipped_with_their_count(tmp_path):
    run = RunDir(tmp_path)
    run.calibration.write_text("{}")  # an earlier end of the run: not left behind
    found = calibration.calibrate_run(None, _Data(6), "cpu", "fp32", run, meta=None)
    assert found == {
        "calibration_skipped": "6 val image(s), fewer than the 50 a temperature "
        "needs: left uncalibrated (T = 1)"
    }
    assert not run.calibration.exists()
    summary = {
        "best_epoch": 1,
        "epochs_completed": 1,
        "best_val_top1": 0.5,
        "test_top1": 0.5,
        "train_seconds": 1.0,
        "train_images_per_second": 10.0,
        "precision": "fp32",
        "device": "cpu",
        "run_dir": "runs/x",
        **found,
    }
    assert "calibration       skipped: 6 val image(s)" in "\n".join(closing_lines(summary))


def test_a_temperature_at_its_bound_is_not_recorded(tmp_path, monkeypatch):
    """Confidently wrong on every validation image: the NLL falls as T grows, the fit ends at
    the cap (100), and every probability would be about 1/classes; it is said and skipped."""
    labels = torch.arange(60) % 10
    logits = torch.nn.functional.one_hot((labels + 1) % 10, 10).float() * 20
    monkeypatch.setattr(calibration, "validation_logits", lambda *a, **k: (logits, labels))
    found = calibration.calibrate_run(None, _Data(60), "cpu", "fp32", RunDir(tmp_path), None)
    assert "ended at its bound 100" in found["calibration_skipped"]
    assert (
        "60 val images" in found["calibration_skipped"]
        and "top-1 there 0.0%" in (found["calibration_skipped"])
    )
    assert "temperature" not in found and not RunDir(tmp_path).calibration.exists()
