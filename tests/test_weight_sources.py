"""--weights sources carry their preprocessing: torchvision's tags, hub folders, the hub cache
(offline), and a clear error when the hub cannot be reached and nothing is cached."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.models import ResNet50_Weights

from resnetlab import create_model
from resnetlab.errors import WeightsError
from resnetlab.weight_sources import resolve_weights, torchvision_preprocess

TIMM_CFG = {
    "architecture": "resnet50",
    "pretrained_cfg": {"input_size": [3, 224, 224], "test_input_size": [3, 288, 288],
                       "crop_pct": 0.95, "test_crop_pct": 1.0, "interpolation": "bicubic",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "num_classes": 1000},
}  # fmt: skip


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
