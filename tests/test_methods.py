"""Training methods: distillation (resumes bit-exactly, refuses a teacher of other classes), SWA
and `average` (loadable runs whose BatchNorm statistics are those of their weights), TTA (the
mean of the augmented passes, calibrated once)."""

import contextlib
import json

import pytest
import torch
from torch.optim.swa_utils import update_bn

from datagen import make_folder
from resnetlab.cli.commands import main
from resnetlab.core.errors import ConfigError
from resnetlab.inference.loading import load_model, run_pipeline
from resnetlab.inference.predict import Predictor
from resnetlab.inference.tta import shifted, tta_logits, views
from resnetlab.train import RunStopped, Trainer, resolve_config
from resnetlab.train.distill import class_order, soft_target_loss

TINY = {"model": "resnet20", "model_kwargs": {"widths": [4, 8, 8]}, "batch_size": 16}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny convolutions on a shared 2-core machine: one thread is many times faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_folder(root, {"红": 20, "blue ü": 20, "green": 20}, size=(36, 36))
    return root


def _cfg(out, folder, **kw):
    base = dict(TINY, data=str(folder), input_size=32, epochs=2, out=str(out), name="run")
    base.update(num_workers=0, val_ratio=0.2, test_ratio=0.2, warmup_epochs=0.0)
    base.update(precision="fp32", deterministic=True, precise_bn=False)
    base.update(kw)
    return resolve_config(base)


def _fit(cfg, resume=None):
    t = Trainer(cfg, resume=resume, verbose=False)
    with contextlib.suppress(RunStopped):
        t.fit()
    return t


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, folder):
    out = tmp_path_factory.mktemp("teacher")
    _fit(_cfg(out, folder, epochs=1, name="teacher", seed=5))
    return out / "teacher"


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- distillation


def test_soft_target_loss_is_hintons():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    T = 4.0
    p = torch.softmax(t / T, 1)
    kl = (p * (p.log() - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert torch.allclose(soft_target_loss(s, t, T), kl, atol=1e-6)
    assert soft_target_loss(t, t, T).abs() < 1e-6


def test_distillation_resumes_bit_exactly(tmp_path, folder, teacher):
    kw = dict(teacher=str(teacher), swa_epochs=2)  # the average resumes too
    straight = _fit(_cfg(tmp_path / "a", folder, **kw))
    steps = len(straight.train_loader)
    _fit(_cfg(tmp_path / "b", folder, max_steps=steps, **kw))  # stops after epoch 1
    resumed = _fit(_cfg(tmp_path / "b", folder, **kw), resume=tmp_path / "b" / "run")
    assert resumed.epoch == straight.epoch == 2
    assert _equal(straight.model.state_dict(), resumed.model.state_dict())
    assert _equal(straight.swa.model.state_dict(), resumed.swa.model.state_dict())
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]
    # The teacher changed the training: the same run without it ends elsewhere.
    alone = _fit(_cfg(tmp_path / "c", folder, swa_epochs=2))
    assert not _equal(alone.model.state_dict(), straight.model.state_dict())


def test_teacher_of_other_classes_is_one_line(tmp_path, folder, trained_run, capsys):
    code = main(
        [
            "train",
            "--data",
            str(folder),
            "--model",
            "resnet20",
            "--model-kwargs",
            "widths=[4,8,8]",
            "--epochs",
            "1",
            "--teacher",
            str(trained_run),
            "--out",
            str(tmp_path),
            "--name",
            "x",
            "--num-workers",
            "0",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "predicts 10 classes, the data has 3" in err and "'红'" in err
    assert not (tmp_path / "x").exists()  # refused before the run folder is claimed


def test_teacher_classes_are_reordered_or_refused():
    assert class_order(["a", "b", "c"], ["a", "b", "c"], True, "t") is None
    assert class_order(["c", "a", "b"], ["a", "b", "c"], True, "t") == [1, 2, 0]
    assert class_order(["0", "1", "2"], ["x", "y", "z"], False, "t") is None  # a plain file
    with pytest.raises(ConfigError, match="other classes than the data's .it lacks 'x', 'y', 'z'"):
        class_order(["0", "1", "2"], ["x", "y", "z"], True, "t")


# --------------------------------------------------------------------- SWA and averaging


def _assert_bn_matches_weights(run_dir):
    """The run loads (strictly), and its BatchNorm statistics are what measuring them again
    on its training images, with torch's own update_bn, gives for its weights."""
    loaded = load_model(run_dir)
    config = loaded.run.read_config()
    pipe = run_pipeline(loaded, batch_size=config["batch_size"], num_workers=0)
    loader, tf = pipe.split_loader("train", channels_last=False)
    stored = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    update_bn([tf(x) for x, _ in loader], loaded.model)
    measured = loaded.model.state_dict()
    bn = [k for k in stored if k.endswith(("running_mean", "running_var"))]
    assert bn
    for k in bn:
        assert torch.allclose(stored[k], measured[k], rtol=1e-3, atol=1e-5), k
    return loaded


def test_swa_run_holds_the_average_with_its_bn(tmp_path, folder, capsys):
    cfg = _cfg(tmp_path, folder, epochs=3, swa_epochs=2, swa_lr=0.01)
    t = Trainer(cfg, verbose=False)
    t.fit()
    assert t.swa.count == 2 and t.scheduler.get_last_lr()[-1] == pytest.approx(0.01)
    run = tmp_path / "run"
    _assert_bn_matches_weights(run)
    # model.safetensors is the average of epochs 2 and 3 (with its measured statistics).
    assert _equal(load_model(run).model.state_dict(), t.swa.model.state_dict())
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == 3
    assert main(["evaluate", str(run), "--backend", "torch"]) == 0
    assert main(["predict", str(run), str(folder / "green"), "--backend", "torch"]) == 0


def test_average_makes_a_loadable_run(tmp_path, folder, teacher, capsys):
    other = _fit(_cfg(tmp_path, folder, epochs=1, name="other", seed=1)).run_dir
    out = tmp_path / "soup"
    assert main(["average", str(teacher), str(other), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "measured again on the 36 training images" in said
    loaded = _assert_bn_matches_weights(out)
    a, b = load_model(teacher).model.state_dict(), load_model(other).model.state_dict()
    for k, v in loaded.model.state_dict().items():
        if "running" not in k and v.is_floating_point():
            assert torch.allclose(v, (a[k] + b[k]) / 2, atol=1e-7), k
    assert main(["evaluate", str(out), "--backend", "torch"]) == 0
    # Without data known, --bn average says so; other classes are refused in one line.
    assert (
        main(
            [
                "average",
                str(teacher / "model.safetensors"),
                str(other / "checkpoint-best.pt"),
                "--out",
                str(tmp_path / "soup2"),
                "--bn",
                "average",
            ]
        )
        == 0
    )
    assert "averaged over the members (--bn average)" in capsys.readouterr().out
    with pytest.raises(AssertionError):  # the members' mean is not the average's statistics
        _assert_bn_matches_weights(tmp_path / "soup2")


def test_average_refuses_other_models(tmp_path, teacher, trained_run, capsys):
    assert main(["average", str(teacher), str(trained_run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be averaged" in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ TTA


def test_tta_is_the_mean_of_the_augmented_passes(trained_run):
    plain = Predictor(trained_run, backend="torch", precision="fp32")
    x = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    inputs = plain._batch_tf(x)
    one = plain.backend.logits
    flip = Predictor(trained_run, backend="torch", precision="fp32", tta="flip")
    want = (one(inputs) + one(inputs.flip(3))) / 2
    assert torch.allclose(flip.logits(x), want, atol=1e-6)
    crops = Predictor(trained_run, backend="torch", precision="fp32", tta="flip-crops")
    # 10 views: each of the image and its mirror, centred and moved 4 px to each corner.
    passes = [
        one(shifted(v, dy, dx))
        for v in (inputs, inputs.flip(3))
        for dy, dx in [(0, 0), (-4, -4), (-4, 4), (4, -4), (4, 4)]
    ]
    assert torch.allclose(crops.logits(x), torch.stack(passes).mean(0), atol=1e-5)
    # Calibrated once: the temperature applies to the mean logit.
    t = plain.temperature
    assert t is not None
    assert torch.allclose(flip.probabilities(x), torch.softmax(want / t, 1), atol=1e-6)


def test_tta_views_and_shift():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    assert [len(views(x, m)) for m in ("none", "flip", "crops", "flip-crops")] == [1, 2, 5, 10]
    s = shifted(x, 1, 0)  # content moved up one row: row r shows row r+1
    assert torch.equal(s[..., :-1, :], x[..., 1:, :])
    assert torch.equal(tta_logits(lambda v: v.sum((2, 3)), x, "none"), x.sum((2, 3)))
    with pytest.raises(ConfigError, match="--tta 'rot'"):
        views(x, "rot")
