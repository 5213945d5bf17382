"""Training engine: run folder, modes, freezing, resume bit-exactness, NaN stop, weights."""

import contextlib
import json
import pickle
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file

from datagen import make_folder, make_mnist
from resnetlab import create_model
from resnetlab.artifacts.weights import WeightsError
from resnetlab.cli.commands import main
from resnetlab.train import NonFiniteLoss, RunStopped, Trainer, resolve_config

TINY = {"model": "resnet20", "model_kwargs": {"widths": [4, 8, 8]}, "batch_size": 16}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_folder(root, {"红": 20, "blue ü": 20, "green": 20}, size=(36, 36))
    return root


def _cfg(tmp_path, folder, **kw):
    base = dict(TINY, data=str(folder), input_size=32, epochs=3, out=str(tmp_path / "runs"))
    base.update(num_workers=0, val_ratio=0.2, test_ratio=0.2, name="run", warmup_epochs=0.0)
    base.update(kw)
    return resolve_config(base)


def test_run_folder_is_complete(tmp_path, folder):
    trainer = Trainer(_cfg(tmp_path, folder), verbose=False)
    summary = trainer.fit()
    run = tmp_path / "runs" / "run"
    for name in [
        "config.yaml",
        "checkpoint-last.pt",
        "checkpoint-best.pt",
        "model.safetensors",
        "model.json",
        "metrics.csv",
        "summary.json",
    ]:
        assert (run / name).is_file(), name
    ck = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert ck["epoch"] == 3 and ck["classes"] == ["blue ü", "green", "红"]
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    assert meta["classes"] == ["blue ü", "green", "红"] and meta["in_chans"] == 3
    assert meta["input_size"] == [3, 32, 32] and len(meta["mean"]) == 3
    on_disk = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["epochs_completed"] == 3 and 0 <= on_disk["test_top1"] <= 1
    assert on_disk == json.loads(json.dumps(summary))
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,seconds"
    assert len(rows) == 4
    # The bundle rebuilds the model by itself.
    model = create_model(meta["model"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    model.load_state_dict(load_file(run / "model.safetensors"))
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["model_kwargs"] == {"widths": [4, 8, 8]} and cfg["epochs"] == 3


def test_existing_run_folder_is_never_overwritten(tmp_path, folder):
    Trainer(_cfg(tmp_path, folder, epochs=1), verbose=False).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_cfg(tmp_path, folder, epochs=1), verbose=False)


def _run_losses(cfg, resume=None):
    t = Trainer(cfg, resume=resume, verbose=False)
    with contextlib.suppress(RunStopped):
        t.fit()
    return t.step_losses, t


@pytest.mark.parametrize("workers, cache", [(0, "memory"), (0, "none"), (2, "none")])
def test_resume_is_bit_exact(tmp_path, folder, workers, cache):
    kw = dict(num_workers=workers, cache=cache, precision="fp32", deterministic=True)
    full, t_full = _run_losses(_cfg(tmp_path / "a", folder, **kw))
    steps_per_epoch = len(t_full.train_loader)
    # Stop after epoch 1, then mid-epoch 2, resuming each time.
    first, _ = _run_losses(_cfg(tmp_path / "b", folder, max_steps=steps_per_epoch, **kw))
    run = tmp_path / "b" / "runs" / "run"
    cfg2 = _cfg(tmp_path / "b", folder, max_steps=steps_per_epoch + 2, **kw)
    second, _ = _run_losses(cfg2, resume=run)
    cfg3 = _cfg(tmp_path / "b", folder, **kw)
    third, t_res = _run_losses(cfg3, resume=run)
    assert first + second + third == full
    a, b = t_full.model.state_dict(), t_res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert t_res.history[-1]["train_loss"] == t_full.history[-1]["train_loss"]
    assert (
        t_res.optimizer.state_dict()["state"].keys()
        == t_full.optimizer.state_dict()["state"].keys()
    )


def test_resume_default_precision_in_memory(tmp_path):
    # MNIST's files are held in memory and augmented there as the digits are (the "small"
    # preset), at a tenth of the digits' 1,259 training images: 7 steps an epoch, not 79.
    make_mnist(tmp_path / "mnist", n_train=120, n_test=20)
    data = f"mnist:{tmp_path / 'mnist'}"
    kw = dict(TINY, data=data, epochs=2, out=str(tmp_path), name="d", num_workers=0)
    full, t_full = _run_losses(resolve_config(dict(kw, name="full")))
    _run_losses(resolve_config(dict(kw, max_steps=len(t_full.train_loader) + 3)))
    rest, t_res = _run_losses(resolve_config(kw), resume=tmp_path / "d")
    assert rest == full[-len(rest) :]
    assert all(
        torch.equal(v, t_res.model.state_dict()[k]) for k, v in t_full.model.state_dict().items()
    )


def test_resume_errors(tmp_path, folder):
    with pytest.raises(WeightsError, match="no checkpoint"):
        Trainer(_cfg(tmp_path, folder), resume=tmp_path / "nothing")
    Trainer(_cfg(tmp_path, folder, epochs=1), verbose=False).fit()
    ck = tmp_path / "runs" / "run" / "checkpoint-last.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="truncated"):
        Trainer(_cfg(tmp_path, folder), resume=ck)


def test_non_finite_loss_stops_with_step(tmp_path, folder):
    cfg = _cfg(tmp_path, folder, lr=1e30, precision="fp32", momentum=0.0, weight_decay=0.0)
    with pytest.raises(NonFiniteLoss, match=r"at step \d+") as exc:
        Trainer(cfg, verbose=False).fit()
    assert exc.value.step >= 1
    run = tmp_path / "runs" / "run"
    if (run / "checkpoint-best.pt").exists():
        state = torch.load(run / "checkpoint-best.pt", weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _pretrained_file(tmp_path, fmt):
    src = create_model("resnet18", num_classes=1000)
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / f"pre.{fmt}"
    if fmt == "pth":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(src.state_dict(), path)
    return src, path


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_feature_extract_freezes_backbone_and_bn(tmp_path, folder, fmt):
    src, path = _pretrained_file(tmp_path, fmt)
    cfg = _cfg(
        tmp_path,
        folder,
        model="resnet18",
        model_kwargs={},
        weights=str(path),
        mode="feature-extract",
        epochs=2,
        lr=0.05,
    )
    t = Trainer(cfg, verbose=False)
    t.fit()
    after = t.model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(after[k], v), k  # weights and BN running stats untouched
    assert not torch.equal(after["fc.weight"][:1], torch.zeros_like(after["fc.weight"][:1]))
    assert t.model.fc.out_features == 3


def test_finetune_in_chans_1_and_unfreeze_schedule(tmp_path, folder):
    src, path = _pretrained_file(tmp_path, "pth")
    cfg = _cfg(
        tmp_path,
        folder,
        model="resnet18",
        model_kwargs={},
        weights=str(path),
        in_chans=1,
        unfreeze_schedule=[1, 3],
        epochs=2,
        backbone_lr_mult=0.5,
    )
    t = Trainer(cfg, verbose=False)
    assert torch.allclose(t.model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    t.train_one_epoch()  # epoch 0: head only
    assert torch.equal(t.model.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    t.train_one_epoch()  # epoch 1: layer4 thawed, the rest still frozen (BN stats included)
    assert torch.equal(t.model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert torch.equal(t.model.layer3[0].bn1.running_mean, src.layer3[0].bn1.running_mean)
    assert not torch.equal(t.model.layer4[0].conv1.weight, src.layer4[0].conv1.weight)
    lrs = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(lrs["head"] * 0.5)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_weights_refused(tmp_path, folder, writer):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    if writer == "pickle":
        with open(bad, "wb") as f:
            pickle.dump({"conv1.weight": Evil()}, f)
    else:
        torch.save({"conv1.weight": Evil()}, bad)
    with (
        warnings.catch_warnings(record=True) as caught,
        pytest.raises(WeightsError, match="refused") as err,
    ):
        warnings.simplefilter("always")
        Trainer(_cfg(tmp_path, folder, model="resnet18", model_kwargs={}, weights=str(bad)))
    assert not marker.exists()
    assert not [w for w in caught if "pickle protocol" in str(w.message)]  # only our error shows
    assert "weights_only" not in str(err.value)  # no advice to load it unsafely instead
    if writer == "torch.save":
        assert "posix.system" in str(err.value)  # what was refused


def test_weights_that_do_not_fit_list_keys(tmp_path, folder):
    path = tmp_path / "w.pth"
    torch.save(create_model("resnet34").state_dict(), path)
    with pytest.raises(WeightsError, match="unexpected keys"):
        Trainer(_cfg(tmp_path, folder, model="resnet18", model_kwargs={}, weights=str(path)))


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nlr: 0.05\nrecipe: paper-cifar\n")
    cfg = resolve_config({"lr": 0.2}, config_file=str(f))
    assert (cfg.epochs, cfg.lr, cfg.schedule, cfg.weight_decay) == (7, 0.2, "multistep", 1e-4)
    f.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="did you mean epochs"):
        resolve_config({}, config_file=str(f))
    with pytest.raises(ValueError, match="--mode finetune needs --weights"):
        resolve_config({"mode": "finetune"})


def test_cli_train_and_resume(tmp_path, folder, capsys):
    argv = [
        "train",
        "--data",
        str(folder),
        "--model-kwargs",
        "widths=[4,8,8]",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(tmp_path),
        "--name",
        "cli",
        "--num-workers",
        "0",
        "--input-size",
        "32",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "best val top-1" in out and "--resume" in out
    assert main(["train", "--resume", str(tmp_path / "cli"), "--epochs", "2", "--quiet"]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    assert main(argv) == 2
    assert "already holds files" in capsys.readouterr().err


def test_recipe_options_run(tmp_path, folder):
    cfg = _cfg(
        tmp_path,
        folder,
        optimizer="adamw",
        lr=3e-3,
        schedule="onecycle",
        mixup=0.2,
        cutmix=1.0,
        ema_decay=0.9,
        clip_grad=1.0,
        tensorboard=True,
        patience=1,
        auto_augment="trivial",
        random_erasing=0.25,
        epochs=3,
    )
    t = Trainer(cfg, verbose=False)
    summary = t.fit()
    run = tmp_path / "runs" / "run"
    assert list(run.glob("events.out.tfevents*"))
    assert 1 <= summary["epochs_completed"] <= 3
    ck = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert ck["ema"] is not None and all(
        torch.isfinite(v).all() for v in ck["ema"].values() if v.is_floating_point()
    )


def test_lr_schedules_shape():
    from resnetlab.train.optim import lr_factor

    cfg = resolve_config({"schedule": "multistep", "epochs": 4, "warmup_epochs": 0.0})
    f = lr_factor(cfg, 10)
    assert [f(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cfg = resolve_config({"schedule": "cosine", "epochs": 10, "warmup_epochs": 1.0})
    f = lr_factor(cfg, 10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(99) < 0.01


def test_no_weight_decay_on_norm_and_bias():
    from resnetlab.train.optim import param_groups

    model = create_model("resnet20")
    groups = {g["name"]: g for g in param_groups(model, resolve_config({}))}
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert model.bn1.weight in groups["backbone_no_decay"]["params"]
    assert model.conv1.weight in groups["backbone"]["params"]
    assert model.fc.bias in groups["head_no_decay"]["params"]


def test_lr_find(tmp_path, folder):
    from resnetlab.train.lr_find import lr_find

    result = lr_find(_cfg(tmp_path, folder, name="lrf"), num_steps=12)
    assert len(result["lrs"]) >= 5 and result["suggestion"] > 0
    assert (tmp_path / "runs" / "lrf" / "lr_find.png").stat().st_size > 1000


def test_pretrained_rgb_weights_on_greyscale_digits(tmp_path):
    src, path = _pretrained_file(tmp_path, "pth")
    cfg = resolve_config(
        dict(
            data="digits",
            model="resnet18",
            weights=str(path),
            epochs=1,
            max_steps=3,
            out=str(tmp_path),
            name="g",
            num_workers=0,
        )
    )
    t = Trainer(cfg, verbose=False)
    assert t.data.channels == 1 and len(t.data.mean) == 1
    assert t.data.mean[0] == pytest.approx(sum((0.485, 0.456, 0.406)) / 3)
    assert torch.allclose(t.model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert cfg.resolved_mode == "finetune"
    # What was loaded and how it was fitted is said once, under the run's first line.
    assert t.weights_note.startswith(
        f"weights {path}: a new classifier for 10 classes; "
        "first conv from 3 to 1 input channels (its RGB filters summed); inputs normalised as "
        "the weights were trained (mean "
    )


def test_torchvision_weights_for_a_cifar_model_is_a_clear_error(tmp_path):
    cfg = resolve_config(dict(weights="torchvision", out=str(tmp_path), name="x"))
    with pytest.raises(WeightsError, match="no ImageNet weights for 'resnet20'"):
        Trainer(cfg, verbose=False)
