"""A trained model is loaded as it was saved: a model.json that disagrees with the weights is
refused naming both files (never answered with a fresh head), a damaged folder points at the
checkpoint that still holds the model, and that checkpoint answers with the run's calibration."""

import json
import shutil
import socket

import pytest
import torch
from PIL import Image

from resnetlab.cli.commands import main
from resnetlab.core.errors import WeightsError
from resnetlab.inference.loading import load_model
from resnetlab.inference.predict import Predictor


@pytest.fixture
def copy(trained_run, tmp_path):
    """A copy of the trained run to damage."""
    return shutil.copytree(trained_run, tmp_path / "run")


def _edit_meta(run, **changes):
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    meta.update(changes)
    (run / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    return meta


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("L", (32, 32), 90).save(path)
    return path


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        (
            {"num_classes": 7},
            "model.json says 7 classes but {run}/model.safetensors has a 10-output "
            "classifier (fc.weight [10, 8])",
        ),
        (
            {"in_chans": 3, "input_size": [3, 32, 32]},
            "model.json says 3 input channel(s) but "
            "{run}/model.safetensors has a first "
            "convolution for 1 (conv1.weight [4, 1, 3, 3])",
        ),
        (
            {"model_kwargs": {"widths": [8, 16, 16]}},
            "{run}/model.safetensors does not fit the "
            "resnet20 that {run}/model.json describes "
            "(shape mismatches: bn1.bias",
        ),
        (
            {"classes": [str(i) for i in range(7)]},
            "model.json names 7 classes but says num_classes 10",
        ),
    ],
)
def test_a_model_json_that_disagrees_with_the_weights_is_refused(
    copy, tmp_path, capsys, changes, says
):
    meta = _edit_meta(copy, **changes)
    if "in_chans" in changes:
        _edit_meta(copy, mean=meta["mean"] * 3, std=meta["std"] * 3)
    with pytest.raises(WeightsError) as info:
        load_model(copy)
    message = str(info.value)
    assert says.format(run=copy) in message and "\n" not in message
    assert message.endswith(
        f"the files do not belong together: restore model.json or use {copy / 'checkpoint-best.pt'}"
    )
    # predict, export and serve load through it: one line each, exit 2, nothing written.
    image = _image(tmp_path)
    capsys.readouterr()
    for argv in (
        ["predict", copy, image, "--backend", "torch"],
        ["export", copy],
        ["serve", copy, "--port", _free_port(), "--backend", "torch"],
    ):
        assert main([str(a) for a in argv]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.strip().splitlines() == [f"resnetlab {argv[0]}: error: {message}"]
    assert not (copy / "model.onnx").exists()


def test_the_best_checkpoint_loads_when_model_json_is_wrong(copy):
    _edit_meta(copy, num_classes=7)
    loaded = load_model(copy / "checkpoint-best.pt")
    assert loaded.meta.num_classes == 10 and len(loaded.classes) == 10


@pytest.mark.parametrize("damage", ["truncated weights", "no model.json", "no weights"])
def test_a_damaged_folder_says_the_checkpoint_still_holds_the_model(copy, damage):
    if damage == "truncated weights":
        data = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (copy / ("model.json" if damage == "no model.json" else "model.safetensors")).unlink()
    best = copy / "checkpoint-best.pt"
    with pytest.raises(WeightsError) as info:
        load_model(copy)
    hint = f"{best} still holds the trained model: use it in place of the run folder"
    assert str(info.value).endswith(hint) and "\n" not in str(info.value)
    assert load_model(best).meta.num_classes == 10  # and it does
    best.unlink()  # without the checkpoint, no hint
    with pytest.raises(WeightsError) as info:
        load_model(copy)
    assert "checkpoint" not in str(info.value)


def test_the_best_checkpoint_answers_with_the_runs_calibration(trained_run):
    meta = json.loads((trained_run / "model.json").read_text(encoding="utf-8"))
    assert meta["temperature"] and meta["temperature"] != 1.0  # the run was calibrated
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    by_run = Predictor(trained_run, backend="torch", precision="fp32")
    by_checkpoint = Predictor(trained_run / "checkpoint-best.pt", backend="torch", precision="fp32")
    assert by_checkpoint.temperature == by_run.temperature == meta["temperature"]
    assert torch.equal(by_checkpoint.probabilities(x), by_run.probabilities(x))


def test_the_calibration_comes_from_calibration_json_without_model_json(copy):
    temperature = json.loads((copy / "model.json").read_text(encoding="utf-8"))["temperature"]
    (copy / "model.json").unlink()
    assert load_model(copy / "checkpoint-best.pt").meta.temperature == temperature


def test_a_checkpoint_of_another_epoch_keeps_its_own_calibration(copy):
    state = torch.load(copy / "checkpoint-best.pt", weights_only=True)
    state["epoch"] += 1  # weights of a later epoch than the calibrated best
    torch.save(state, copy / "checkpoint-later.pt")
    assert load_model(copy / "checkpoint-later.pt").meta.temperature is None
