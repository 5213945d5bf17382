"""--weights sources carry their preprocessing: torchvision's tags, hub folders, the hub cache
(offline), and a clear error when the hub cannot be reached and nothing is cached."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.models import ResNet50_Weights

from resnetlab import create_model
from resnetlab.artifacts.weight_sources import resolve_weights, torchvision_preprocess
from resnetlab.core.errors import WeightsError

TIMM_CFG = {
    "architecture": "resnet50",
    "pretrained_cfg": {
        "input_size": [3, 224, 224],
        "test_input_size": [3, 288, 288],
        "crop_pct": 0.95,
        "test_crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "num_classes": 1000,
    },
}


def test_torchvision_v1_and_v2_say_their_resize():
    v2 = torchvision_preprocess(ResNet50_Weights.IMAGENET1K_V2)
    v1 = torchvision_preprocess(ResNet50_Weights.IMAGENET1K_V1)
    assert (v2.resize_size, v2.crop_size, v2.interpolation) == (232, 224, "bilinear")
    assert (v1.resize_size, v1.crop_size) == (256, 224)


def test_unknown_torchvision_tag_lists_the_real_ones():
    with pytest.raises(WeightsError, match="IMAGENET1K_V2"):
        resolve_weights("torchvision:IMAGENET9K", "resnet50")


def _hub_folder(folder, model="resnet18"):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(create_model(model, num_classes=1000).state_dict(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(TIMM_CFG))
    return folder


def test_a_local_hub_folder_gives_weights_and_preprocessing(tmp_path):
    src = resolve_weights(str(_hub_folder(tmp_path / "resnet18.a1_in1k")), "resnet18")
    assert "conv1.weight" in src.state and src.state["fc.weight"].shape == (1000, 512)
    p = src.preprocess
    # timm evaluates at its test size: 288 with crop fraction 1.0, bicubic
    assert (p.resize_size, p.crop_size, p.interpolation) == (288, 288, "bicubic")


def test_hub_offline_uses_the_cache_and_says_when_it_is_not_there(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import importlib

    import huggingface_hub.constants as constants

    importlib.reload(constants)  # the cache folder and offline flag are read at import
    try:
        with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
            resolve_weights("hf-hub:timm/resnet18.a1_in1k", "resnet18")
        repo = cache / "models--timm--resnet18.a1_in1k"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
        snap = _hub_folder(repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567")
        src = resolve_weights("hf-hub:timm/resnet18.a1_in1k", "resnet18")
        assert src.source == "hf-hub:timm/resnet18.a1_in1k"
        assert src.preprocess.interpolation == "bicubic"
        assert torch.equal(src.state["fc.bias"], load_file(snap / "model.safetensors")["fc.bias"])
    finally:
        monkeypatch.undo()
        importlib.reload(constants)


def test_a_run_from_hub_weights_predicts_with_their_preprocessing(tmp_path):
    from datagen import make_folder
    from resnetlab.cli.commands import main
    from resnetlab.inference.loading import load_model, run_pipeline
    from resnetlab.inference.predict import Predictor

    hub = _hub_folder(tmp_path / "resnet18.tv_in1k")
    cfg = json.loads((hub / "config.json").read_text())
    cfg["pretrained_cfg"].pop("test_input_size")
    cfg["pretrained_cfg"].pop("test_crop_pct")  # crop_pct 0.95 at 224: resize 236
    (hub / "config.json").write_text(json.dumps(cfg))
    data = make_folder(tmp_path / "photos", {"ant": 6, "bee": 6}, size=(80, 72))
    argv = [
        "train",
        "--data",
        str(data),
        "--model",
        "resnet18",
        "--weights",
        str(hub),
        "--input-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "r",
    ]
    assert main(argv) == 0
    run = tmp_path / "runs" / "r"
    meta = json.loads((run / "model.json").read_text())
    assert meta["resize_size"] == round(64 * 236 / 224) and meta["interpolation"] == "bicubic"
    p = Predictor(run, backend="torch")
    assert p._decode_tf.short_side == 67 and p.min_side is None  # full-scale JPEG decoding
    assert p._decode_tf.interpolation == "bicubic"  # the weights' kernel, not only recorded
    pipe = run_pipeline(load_model(run), num_workers=0)
    assert pipe.cfg.eval_resize == 67 and pipe.cfg.eval_interpolation == "bicubic"
    from resnetlab.analysis.explain import Explainer

    assert Explainer.from_loaded(load_model(run))._to_input.interpolation == "bicubic"


def test_v2_metadata_builds_the_232_transform():
    from resnetlab.data.transforms import file_transform

    v2 = torchvision_preprocess(ResNet50_Weights.IMAGENET1K_V2)
    tf = file_transform("imagenet", v2.crop_size, train=False, resize_size=v2.resize_size)
    assert (tf.short_side, tf.size) == (232, 224)
    assert file_transform("imagenet", 224, train=False).short_side == 256


def test_models_lists_the_published_weights_with_top1_and_preprocessing(capsys):
    from resnetlab.cli.commands import main

    assert main(["models", "resnet50", "--weights"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "IMAGENET1K_V2" in line)
    assert "80.86%" in row and "resize 232 -> crop 224" in row
    assert "hf-hub:timm/resnet50" in out


def test_a_run_folder_as_weights_brings_its_normalisation(tmp_path, capsys):
    """Weights made by resnetlab (a run folder, or its model.safetensors) are fine-tuned with
    the mean/std they were trained with, not ImageNet's."""
    from datagen import make_folder
    from resnetlab.cli.commands import main

    common = [
        "--model",
        "resnet20",
        "--model-kwargs",
        "widths=[4,8,8]",
        "--epochs",
        "1",
        "--num-workers",
        "0",
        "--out",
        str(tmp_path / "runs"),
    ]
    assert main(["train", *common, "--name", "pre", "--quiet"]) == 0  # digits: 1 channel
    pre = json.loads((tmp_path / "runs" / "pre" / "model.json").read_text())
    data = make_folder(tmp_path / "photos", {"ant": 6, "bee": 6}, size=(36, 36))
    for name, weights in (("a", "pre"), ("b", "pre/model.safetensors")):
        capsys.readouterr()
        argv = [
            "train",
            *common,
            "--data",
            str(data),
            "--input-size",
            "32",
            "--batch-size",
            "4",
            "--weights",
            str(tmp_path / "runs" / weights),
            "--name",
            name,
        ]
        assert main(argv) == 0
        meta = json.loads((tmp_path / "runs" / name / "model.json").read_text())
        assert meta["mean"] == pre["mean"] * 3 and meta["std"] == pre["std"] * 3
        assert "inputs normalised as the weights were trained" in capsys.readouterr().err
