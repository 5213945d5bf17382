"""Calibration in the product: a deliberately over-confident model is calibrated at the end
of training (``train.calibration.calibrate_run``), and the temperature reaches predict,
evaluate and the ONNX metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from resnetlab.artifacts.run import ModelMeta, RunDir
from resnetlab.artifacts.weights import save_bundle
from resnetlab.data import DataConfig, build_pipeline
from resnetlab.inference.loading import load_model
from resnetlab.models import create_model
from resnetlab.train.calibration import calibrate_run, validation_logits
from resnetlab.train.config import TrainConfig, dump_yaml

WIDTHS = [4, 8, 8]
# The trained logits multiplied by this: the same predictions, far too sure of themselves.
OVERCONFIDENCE = 8.0


def tiny_run(
    root: Path, steps: int = 120, scale: float = 1.0, data: str = "digits", **data_options
) -> RunDir:
    """A run folder (config.yaml, model.safetensors, model.json) of a tiny resnet20 trained for
    ``steps`` SGD steps on ``data``, its classifier multiplied by ``scale``: a few seconds on
    one core, an accuracy between chance and perfect, so there are mistakes to be sure of.
    ``data_options``: more DataConfig settings (e.g. ``input_size``, ``preset``)."""
    torch.manual_seed(0)
    options = dict(data=data, num_workers=0, batch_size=64, **data_options)
    cfg = TrainConfig(**options)
    pipe = build_pipeline(DataConfig(**options))
    model = create_model(
        "resnet20", num_classes=len(pipe.classes), in_chans=pipe.channels, widths=WIDTHS
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader, tf = pipe.split_loader("train", train=True, channels_last=False)
    done = 0
    while done < steps:
        loader.sampler.set_epoch(done)
        for x, y in loader:
            loss = F.cross_entropy(model(tf(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    with torch.no_grad():
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    model.eval()
    size = pipe.input_size
    meta = ModelMeta(
        model="resnet20",
        num_classes=len(pipe.classes),
        in_chans=pipe.channels,
        classes=list(pipe.classes),
        input_size=[pipe.channels, size, size],
        mean=pipe.mean,
        std=pipe.std,
        preset=pipe.preset,
        model_kwargs={"widths": WIDTHS},
    )
    run = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / RunDir.CONFIG).write_text(dump_yaml(cfg), encoding="utf-8")
    save_bundle(model, meta, root)
    return run


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """An over-confident run, then what calibrate_run made of it."""
    torch.set_num_threads(1)
    run = tiny_run(tmp_path_factory.mktemp("cal") / "run", scale=OVERCONFIDENCE)
    loaded = load_model(run.path)
    pipe = build_pipeline(DataConfig(data="digits", num_workers=0, batch_size=64))
    before = validation_logits(loaded.model, pipe, "cpu")
    result = calibrate_run(loaded.model, pipe, "cpu", "fp32", run, loaded.meta)
    return run, result, before


def test_an_overconfident_model_is_calibrated(calibrated):
    run, result, (logits, labels) = calibrated
    accuracy = float((logits.argmax(1) == labels).float().mean())
    assert 0.3 < accuracy < 0.99, accuracy  # mistakes to be over-confident about
    assert set(result) == {"temperature", "ece_before", "ece_after"}
    # Logits scaled up 8x are too sharp: the fitted temperature undoes much of it.
    assert result["temperature"] > 2.0
    assert result["ece_before"] > 0.1
    assert result["ece_after"] < result["ece_before"] / 2
    saved = json.loads(run.calibration.read_text(encoding="utf-8"))
    assert saved["temperature"] == pytest.approx(result["temperature"])
    assert saved["num_samples"] == len(labels) and saved["split"] == "val"
    assert len(saved["reliability_after"]["counts"]) == 15
    assert run.read_meta().temperature == pytest.approx(result["temperature"])


def test_predict_returns_calibrated_probabilities(calibrated, tmp_path):
    from resnetlab.inference.predict import Predictor

    run, result, _ = calibrated
    p = Predictor(run.path, backend="torch", device="cpu", precision="fp32")
    x = torch.randint(0, 256, (4, *p.meta.input_size), dtype=torch.uint8)
    logits = p.logits(x)
    probs = p.probabilities(x)
    expected = torch.softmax(logits / result["temperature"], 1)
    torch.testing.assert_close(probs, expected)
    assert torch.equal(probs.argmax(1), logits.argmax(1))  # calibration changes no answer
    # The rows of predict_paths go through the same temperature.
    from PIL import Image

    Image.new("L", (8, 8), 128).save(tmp_path / "a.png")
    row = p.predict_paths([tmp_path / "a.png"], topk=10)[0]
    one = p.probabilities(p.preprocess(Image.open(tmp_path / "a.png").convert("L"))[None])[0]
    assert row["topk"][0]["prob"] == pytest.approx(float(one.max()), abs=1e-6)


def test_evaluate_reports_the_calibrated_ece(calibrated):
    from resnetlab.analysis.evaluate import evaluate_run

    run, result, _ = calibrated
    r = evaluate_run(str(run.path), split="val", backend="torch", precision="fp32", device="cpu")
    assert r["temperature"] == pytest.approx(result["temperature"])
    assert r["ece"] == pytest.approx(result["ece_after"], abs=1e-6)
    assert 0 < r["balanced_accuracy"] <= 1 and 0 < r["f1_macro"] <= 1


def test_export_metadata_carries_the_temperature(calibrated):
    from resnetlab.inference.export import _metadata

    run, result, _ = calibrated
    meta = _metadata(load_model(run.path))
    assert float(meta["resnetlab.temperature"]) == pytest.approx(result["temperature"])


def test_no_validation_split_leaves_the_model_uncalibrated(tmp_path):
    pipe = build_pipeline(DataConfig(data="digits", num_workers=0))
    del pipe.source.splits["val"]
    run = RunDir(tmp_path)
    meta = ModelMeta("resnet20", 10, 1, [str(i) for i in range(10)], [1, 32, 32], [0.5], [0.5])
    model = create_model("resnet20", num_classes=10, in_chans=1, widths=WIDTHS)
    assert calibrate_run(model, pipe, "cpu", "fp32", run, meta) is None
    assert not run.calibration.exists() and meta.temperature is None


def test_best_weights_come_from_the_checkpoint(tmp_path):
    from resnetlab.train.calibration import best_weights
    from resnetlab.train.checkpoint import save_checkpoint

    model = create_model("resnet20", num_classes=10, in_chans=1, widths=WIDTHS)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    from resnetlab.train.checkpoint import capture_rng

    full = {
        "model": saved,
        "ema": None,
        "optimizer": {},
        "scheduler": {},
        "epoch": 1,
        "config": {},
        "classes": [str(i) for i in range(10)],
        "rng": capture_rng(),
    }
    save_checkpoint(full, tmp_path / "best.pt")
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    best = best_weights(model, tmp_path / "best.pt")
    assert torch.equal(best.fc.weight, saved["fc.weight"])
    assert not torch.equal(model.fc.weight, saved["fc.weight"])  # the original is untouched
    assert torch.equal(best_weights(model, tmp_path / "none.pt").fc.weight, model.fc.weight)
