"""`export --format hub` and `push`: a folder timm opens with `local-dir:` (its classes and
preprocessing in config.json, torchvision's keys in model.safetensors) whose logits are
`resnetlab predict`'s, with a model card; CIFAR-style nets, which timm lacks, get the same
folder for `--weights DIR`; `push` uploads it, and offline says so in one line."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from datagen import make_folder
from resnetlab.artifacts.run import ModelMeta, RunDir
from resnetlab.artifacts.weights import save_bundle
from resnetlab.cli.commands import main

CLASSES = ["人参", "当归", "枸杞 子"]


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """A resnet18 run folder (model.safetensors + model.json) with non-trivial BatchNorm
    statistics, its own mean/std and a 64-pixel input (ImageNet preset: resize, crop)."""
    torch.manual_seed(0)
    model = resnetlab.create_model("resnet18", num_classes=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    meta = ModelMeta(
        model="resnet18",
        num_classes=3,
        in_chans=3,
        classes=CLASSES,
        input_size=[3, 64, 64],
        mean=[0.5, 0.45, 0.4],
        std=[0.2, 0.25, 0.3],
        preset="imagenet",
        temperature=1.5,
    )
    run = tmp_path_factory.mktemp("r18") / "run"
    run.mkdir()
    save_bundle(model, meta, run)
    return run


def _image(path, seed=0, size=(90, 70)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_timm_opens_the_folder_with_the_classes_preprocessing_and_logits_of_predict(
    imagenet_run, tmp_path, capsys
):
    timm = pytest.importorskip("timm")
    out = tmp_path / "hub"
    assert main(["export", str(imagenet_run), "--format", "hub", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"timm.create_model('local-dir:{out}') opens it (resnet18)" in said
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == CLASSES and model.num_classes == 3
    cfg = timm.data.resolve_data_config({}, model=model)
    assert tuple(cfg["input_size"]) == (3, 64, 64) and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == pytest.approx((0.5, 0.45, 0.4)) and cfg["crop_mode"] == "center"
    assert int(64 / cfg["crop_pct"]) == 73  # resnetlab's resize: 64 / 0.875
    # the same logits as resnetlab's model on the same input ...
    ours = resnetlab.create_model("resnet18", num_classes=3).eval()
    from resnetlab.artifacts.weights import read_state_dict

    ours.load_state_dict(read_state_dict(RunDir(imagenet_run).weights))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), atol=1e-5, rtol=1e-5)
    # ... and timm's own preprocessing of a photo gives predict's probabilities
    images = [_image(tmp_path / f"photo{i}.png", seed=i, size=(90 + 17 * i, 70)) for i in range(3)]
    assert (
        main(
            [
                "predict",
                str(imagenet_run),
                *map(str, images),
                "--json",
                "--topk",
                "3",
                "--backend",
                "torch",
                "--precision",
                "fp32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    transform = timm.data.create_transform(**cfg)
    for path, row in zip(images, rows):
        x = transform(Image.open(path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            probs = (model(x) / 1.5).softmax(-1)[0]  # the card says: divide by T = 1.5
        got = {t["label"]: t["prob"] for t in row["topk"]}
        assert [got[c] for c in CLASSES] == pytest.approx(probs.tolist(), abs=2e-4)


@pytest.fixture(scope="module")
def cifar_hub(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar") / "hub"
    from resnetlab.inference.hub import export_hub

    r = export_hub(trained_run, out)
    assert r["timm"] is False and r["architecture"] == "resnet20"
    return out


def test_a_cifar_net_gets_the_same_folder_for_weights_dir(trained_run, cifar_hub):
    from resnetlab.artifacts.weight_sources import resolve_weights
    from resnetlab.artifacts.weights import read_state_dict

    config = json.loads((cifar_hub / "config.json").read_text(encoding="utf-8"))
    assert config["architecture"] == "resnet20"
    assert config["resnetlab"]["model_kwargs"] == {"widths": [4, 8, 8]}
    assert config["label_names"] == RunDir(trained_run).read_meta().classes
    src = resolve_weights(str(cifar_hub), "resnet20")
    assert src.classes == config["label_names"]
    meta = RunDir(trained_run).read_meta()
    assert src.preprocess.mean == pytest.approx(tuple(meta.mean))
    assert src.preprocess.crop_size == meta.size == src.preprocess.resize_size  # both sides
    want = read_state_dict(RunDir(trained_run).weights)
    assert set(src.state) == set(want)
    assert all(torch.equal(src.state[k], want[k]) for k in want)


def test_training_from_the_folder_with_weights_dir(cifar_hub, tmp_path, capsys):
    data = make_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--model",
                "resnet20",
                "--model-kwargs",
                "widths=[4,8,8]",
                "--weights",
                str(cifar_hub),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--no-precise-bn",
                "--num-workers",
                "0",
                "--out",
                str(tmp_path / "runs"),
                "--name",
                "ft",
                "--quiet",
            ]
        )
        == 0
    )
    meta = RunDir(tmp_path / "runs" / "ft").read_meta()
    assert meta.weights == str(cifar_hub) and meta.classes == ["a", "b"]


def test_the_model_card(trained_run, cifar_hub):
    card = (cifar_hub / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: resnetlab\n")
    for heading in (
        "## Use it",
        "## Data",
        "## Metrics",
        "## Calibration",
        "## Preprocessing",
        "## Training",
        "## Limits",
    ):
        assert heading in card
    meta = RunDir(trained_run).read_meta()
    for c in meta.classes:
        assert f"| {c} | " in card  # a row of metrics per class
    summary = RunDir(trained_run).read_summary()
    assert f"T = {summary['temperature']:.4g}" in card
    assert "resized to 32x32 (both sides)" in card and "`digits`" in card
    assert "- epochs: `1`" in card and "timm has no `resnet20`" in card
    assert "On the test split (269 images): top-1" in card


def test_export_hub_refuses_a_folder_holding_other_files(trained_run, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert (
        main(["export", str(trained_run), "--format", "hub", "--out", str(tmp_path / "mine")]) == 2
    )
    assert "holds other files" in capsys.readouterr().err


def test_push_offline_is_one_line(trained_run, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(trained_run), "someone/digits-resnet20"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot push to someone/digits-resnet20" in err and "HF_HUB_OFFLINE" in err
    assert main(["push", str(trained_run), "no-slash"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err


def test_push_uploads_the_hub_folder(trained_run, monkeypatch, capsys, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create"] = (repo_id, kw)

    def upload_folder(self, repo_id, folder_path, **kw):
        calls["upload"] = (
            repo_id,
            sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()),
        )
        shutil.copytree(folder_path, tmp_path / "sent")
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    assert main(["push", str(trained_run), "someone/digits", "--private"]) == 0
    assert "pushed someone/digits" in capsys.readouterr().out
    assert calls["create"] == (
        "someone/digits",
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    assert calls["upload"] == ("someone/digits", ["README.md", "config.json", "model.safetensors"])
    card = (tmp_path / "sent" / "README.md").read_text(encoding="utf-8")
    assert card.splitlines()[0] == "---" and "# someone/digits" in card


def test_the_folder_reads_back_from_the_hub_cache_as_hf_hub(imagenet_run, tmp_path, monkeypatch):
    """What `push` uploads, as a user who downloaded it finds it: in the Hugging Face cache,
    offline; `--weights hf-hub:` and timm's `hf-hub:` read it back with its classes,
    preprocessing and the run's own weights."""
    hub = pytest.importorskip("huggingface_hub")
    timm = pytest.importorskip("timm")
    from resnetlab.artifacts.weight_sources import resolve_weights
    from resnetlab.artifacts.weights import read_state_dict
    from resnetlab.inference.hub import export_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--lab--herbs"
    export_hub(imagenet_run, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    src = resolve_weights("hf-hub:lab/herbs", "resnet18")
    want = read_state_dict(RunDir(imagenet_run).weights)
    assert src.source == "hf-hub:lab/herbs" and src.classes == CLASSES
    assert set(src.state) == set(want) and all(torch.equal(src.state[k], want[k]) for k in want)
    assert src.preprocess.mean == pytest.approx((0.5, 0.45, 0.4))
    assert (src.preprocess.crop_size, src.preprocess.resize_size) == (64, 73)

    model = timm.create_model("hf-hub:lab/herbs", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == CLASSES
    ours = resnetlab.create_model("resnet18", num_classes=3).eval()
    ours.load_state_dict(want)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), atol=1e-5, rtol=1e-5)
    # a name the cache does not hold is one line saying how to get it
    from resnetlab.artifacts.weight_sources import WeightsError

    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        resolve_weights("hf-hub:lab/other", "resnet18")
