"""The Python API at the package root: fit, load and Run, as a notebook user calls them.

Settings resolve through the command line's own function (the same job trained both ways
writes the same config.yaml), errors name Python's arguments, ``data`` takes what a notebook
holds, and ``Run.predict`` takes every kind of image a user holds and refuses the rest in one
line that says what it accepts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import resnetlab
from resnetlab.cli.commands import main
from resnetlab.core.errors import ConfigError, DataError, ResnetlabError

TINY = {
    "model_kwargs": {"widths": [4, 8, 8]},
    "epochs": 1,
    "num_workers": 0,
    "precise_bn": False,
    "batch_size": 8,
}


def _shapes(rng, n_per_class: int = 12, size: int = 12):
    """(images uint8 (N, size, size, 3), class names): one bright channel per class."""
    images, labels = [], []
    for c, name in enumerate(["红", "green", "blue"]):
        for _ in range(n_per_class):
            a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            a[..., c] += 180
            images.append(a)
            labels.append(name)
    return np.stack(images), labels


# --------------------------------------------------------------------------- settings


def test_the_cli_and_fit_resolve_the_same_job_to_the_same_config(tmp_path, capsys):
    """--weights picks the finetune recipe both ways; config.yaml is the same file."""
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    images, labels = _shapes(rng, n_per_class=8)
    for i, (a, name) in enumerate(zip(images, labels)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(folder / name / f"{i}.png")
    weights = tmp_path / "w.safetensors"
    model = resnetlab.create_model("resnet20", widths=[4, 8, 8])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    argv = [
        "train",
        "--data",
        str(folder),
        "--model",
        "resnet20",
        "--model-kwargs",
        "widths=[4,8,8]",
        "--weights",
        str(weights),
        "--epochs",
        "1",
        "--num-workers",
        "0",
        "--no-precise-bn",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "cli",
        "--quiet",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    run = resnetlab.fit(
        data=folder,
        model="resnet20",
        weights=str(weights),
        out=tmp_path / "runs",
        name="python",
        **TINY,
    )
    captured = capsys.readouterr()
    out = captured.err + captured.out  # the run's lines on stderr, the closing block on stdout
    assert "recipe finetune (chosen for" in out and ": AdamW lr 0.001" in out  # as the CLI
    for line in ("best epoch", "best val top-1", "test top-1", "run folder"):
        assert line in out, line  # the closing block
    cli = yaml.safe_load((tmp_path / "runs" / "cli" / "config.yaml").read_text())
    python = yaml.safe_load((run.path / "config.yaml").read_text())
    assert cli.pop("name") == "cli" and python.pop("name") == "python"
    assert python == cli
    assert python["recipe"] == "finetune" and python["optimizer"] == "adamw"
    assert isinstance(run, resnetlab.Run) and run.path == tmp_path / "runs" / "python"


@pytest.mark.parametrize(
    ("settings", "python", "argv", "flag"),
    [
        (
            {"epochs": -1},
            "epochs=-1: must be at least 1",
            ["--epochs", "-1"],
            "--epochs must be at least 1, got -1",
        ),
        (
            {"lr": "fast"},
            "lr='fast': must be a number; 'fast' is a str",
            ["--lr", "fast"],
            "argument --lr: invalid float value: 'fast'",
        ),
        (
            {"epochs": 2.5},
            "epochs=2.5: must be a whole number; 2.5 is a float",
            ["--epochs", "2.5"],
            "argument --epochs: invalid int value: '2.5'",
        ),
        (
            {"nesterov": "maybe"},
            "nesterov='maybe': must be True or False; 'maybe' is a str",
            "nesterov: maybe",
            "--nesterov must be True or False; 'maybe' is a str",
        ),
        (
            {"mode": "finetune"},
            "mode='finetune' needs weights (torchvision or a file)",
            ["--mode", "finetune"],
            "--mode finetune needs --weights",
        ),
        (
            {"lrr": 0.1},
            "fit(): unknown setting(s): lrr (did you mean lr?)",
            ["--lrr", "0.1"],
            "unrecognized arguments: --lrr 0.1",
        ),
        (
            {"val_ratio": 1.5},
            "val_ratio=1.5: must be in [0, 1) (e.g. 0.1 holds out 10 %)",
            ["--val-ratio", "1.5"],
            "--val-ratio must be in [0, 1), got 1.5",
        ),
    ],
)
def test_errors_in_python_name_the_argument_and_in_the_cli_the_flag(
    settings, python, argv, flag, capsys, tmp_path
):
    with pytest.raises(ResnetlabError) as exc:
        resnetlab.fit(data="digits", out=tmp_path, **settings)
    assert python in str(exc.value)
    assert "--" not in str(exc.value)
    if isinstance(argv, str):  # a YAML file of settings
        (tmp_path / "c.yaml").write_text(argv + "\n")
        argv = ["--config", str(tmp_path / "c.yaml")]
    try:  # argparse's refusals exit; the library's are one line and status 2
        code = main(["train", "--out", str(tmp_path), *argv])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    assert flag in capsys.readouterr().err
    assert not any(tmp_path.iterdir()) or all(p.suffix == ".yaml" for p in tmp_path.iterdir())


def test_python_messages_keep_the_commands_they_quote():
    from resnetlab.api import python_message

    text = python_message(
        "--epochs 3: runs/x has already completed 5 epochs; resnetlab train --resume runs/x "
        "--epochs 9; or pass --weights PATH",
        {"epochs": 3},
        {"epochs", "weights", "resume"},
    )
    assert text.startswith("epochs=3: runs/x has already completed 5 epochs; ")
    assert "resnetlab train --resume runs/x --epochs 9" in text and "weights=PATH" in text


# ------------------------------------------------------------------------------- data


def test_fit_takes_an_in_memory_pair_a_dataset_and_images_of_several_sizes(tmp_path, monkeypatch):
    from torch.utils.data import TensorDataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    images, labels = _shapes(rng)
    run = resnetlab.fit(data=(images, labels), verbose=False, out=tmp_path, name="pair", **TINY)
    assert run.classes == sorted(["红", "green", "blue"])
    assert run.config["data"].startswith("memory:") and run.summary["test_top1"] is not None
    assert run.meta.input_size == [3, 16, 16]  # from the images' own size, as a folder's
    # the same pair, evaluated in this process on the run's own test split
    ev = run.evaluate()
    assert ev["split"] == "test" and ev["num_samples"] == sum(map(sum, ev["confusion_matrix"]))
    # a Dataset of (CHW float in [0, 1], int label), as torchvision's ToTensor gives them
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([["红", "green", "blue"].index(v) for v in labels])
    ds = TensorDataset(x, y)
    ds.classes = ["红", "green", "blue"]
    run2 = resnetlab.fit(data=ds, verbose=False, out=tmp_path, name="dataset", **TINY)
    assert run2.classes == ["红", "green", "blue"]
    # PIL images of several sizes: written once as a folder of PNGs, trained as a folder
    pil = [Image.fromarray(a).resize((12 + i % 3, 12)) for i, a in enumerate(images)]
    run3 = resnetlab.fit(data=(pil, labels), verbose=False, out=tmp_path, name="pil", **TINY)
    data = Path(run3.config["data"])
    assert data.is_dir() and data.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == sorted(run3.classes)


def test_fit_refuses_data_it_cannot_use_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data=dict: give a DATA string"):
        resnetlab.fit(data={"x": 1})
    with pytest.raises(ConfigError, match="3 images but 2 labels"):
        resnetlab.fit(data=(np.zeros((3, 8, 8), np.uint8), [0, 1]))
    with pytest.raises(ConfigError, match="a float64 array; images are uint8"):
        resnetlab.fit(data=([np.zeros((8, 8))], [0]))
    with pytest.raises(DataError, match=r"data='nowhere/x' is not a folder"):
        resnetlab.fit(data="nowhere/x")


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def digits(trained_run, tmp_path_factory):
    """The digits run opened, and a folder of digit PNGs (8x8 greyscale)."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    d = load_digits()
    arrays = [np.rint(d.images[i] * 255 / 16).astype(np.uint8) for i in range(4)]
    for i, a in enumerate(arrays):
        Image.fromarray(a, "L").save(folder / f"{i}.png")
    return resnetlab.load(trained_run), folder, arrays


def test_predict_takes_every_kind_of_image_a_user_holds(digits):
    run, folder, arrays = digits
    files = sorted(folder.glob("*.png"))
    ref = run.predict([str(f) for f in files]).probs
    assert ref.shape == (4, 10) and np.isfinite(ref).all()

    def close(x, rows=slice(None), atol=1e-6):
        got = run.predict(x)
        assert got.probs.shape == ref[rows].shape, type(x)
        assert np.abs(got.probs - ref[rows]).max() <= atol, type(x)
        return got

    assert len(close(str(files[0]), slice(0, 1))) == 1  # a bare string is one image
    close(files[0], slice(0, 1))  # a Path
    close(folder)  # a folder, walked
    close(str(folder / "*.png"))  # a glob
    close([f.read_bytes() for f in files])  # bytes
    close([Image.open(f) for f in files])  # PIL images
    close(arrays)  # HxW uint8 arrays
    close(np.stack(arrays))  # NxHxW
    close([a[:, :, None] for a in arrays])  # HxWx1
    close([np.repeat(a[:, :, None], 3, axis=2) for a in arrays])  # RGB, made greyscale
    close(torch.from_numpy(np.stack(arrays))[:, None])  # NCHW uint8
    close(torch.from_numpy(arrays[0])[None], slice(0, 1))  # CHW uint8
    mixed = run.predict(
        iter([str(files[0]), Image.open(files[1]), arrays[2], torch.from_numpy(arrays[3])[None]])
    )
    assert np.abs(mixed.probs - ref).max() <= 1e-6  # a generator mixing kinds
    # float in [0, 1] at the input size: the exact pixels the model sees, without rounding
    p = run._predictor("torch", None, "fp32", 32)
    from resnetlab.data.images import open_image

    seen = torch.stack([p.preprocess(open_image(f, 1)) for f in files]).float() / 255
    close(seen, atol=1e-5)
    close(list(seen), atol=1e-5)


def test_explain_explains_predict_s_class_with_predict_s_probability(digits):
    """Whatever the image is held as (a float tensor too, resized in floating point as
    predict resizes it), Grad-CAM explains the class predict gives it, with the probability
    predict gives it, through the run's temperature."""
    run, folder, arrays = digits
    assert run.meta.temperature is not None  # calibrated: the division must match too
    x = torch.from_numpy(np.stack(arrays)).float()[:, None] / 255  # 8x8, floats, not 0..255
    for given in ([str(f) for f in sorted(folder.glob("*.png"))], arrays, x, list(x)):
        ref = run.predict(given).probs
        es = run.explain(given)
        assert [e.index for e in es] == ref.argmax(1).tolist()
        got = np.array([e.prob for e in es])
        assert np.abs(got - ref.max(1)).max() <= 1e-6, type(given)
        assert es[0].image.dtype == torch.uint8  # what it shows under the heat


def test_predict_and_evaluate_print_progress_lines_to_a_log(
    digits, trained_run, capsys, monkeypatch
):
    """Where stderr is a log (here captured: no terminal, no kernel), progress is a plain line
    every RESNETLAB_PROGRESS_SECONDS (0: at every batch); progress=False prints nothing. In a
    notebook it is a bar (test_notebook_api)."""
    run, _, arrays = digits
    monkeypatch.setenv("RESNETLAB_PROGRESS_SECONDS", "0")
    x = np.stack(arrays * 5)  # 20 images, 5 batches of 4
    capsys.readouterr()
    run.predict(x, batch_size=4)
    run.evaluate(out=trained_run.parent / "eval-progress")
    err = capsys.readouterr().err
    assert "predict  4/20 images (20%)" in err and "predict  16/20 images (80%)" in err, err
    assert "evaluate test  64/269 images (24%)" in err and "ETA" in err and "\r" not in err
    run.predict(x, batch_size=4, progress=False)
    run.evaluate(out=trained_run.parent / "eval-progress", progress=False)
    run.predict(x[:4], batch_size=4)  # one batch: nothing to follow
    assert capsys.readouterr().err == ""


def test_predictions_have_labels_topk_errors_pandas_and_a_notebook_display(digits, tmp_path):
    run, folder, _ = digits
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    files = [
        str(folder / "0.png"),
        str(bad),
        str(tmp_path / "missing.png"),
        str(tmp_path / "none-*.png"),
        str(folder / "1.png"),
    ]
    r = run.predict(files, topk=3)
    assert len(r) == 5 and r.probs.shape == (5, 10)
    assert [e is None for e in r.errors] == [True, False, False, False, True]
    assert "not an image" in r.errors[1] and r.errors[3] == "no file matches this pattern"
    assert np.isnan(r.probs[1]).all() and r.labels[1] is None and r.topk()[1] == []
    assert r.labels[0] == run.classes[int(np.argmax(r.probs[0]))]
    tops = r.topk(2)[0]
    assert [t["index"] for t in tops] == list(np.argsort(-r.probs[0])[:2])
    assert r.rows()[0]["path"] == files[0] and r[0]["label"] == r.labels[0]
    frame = r.to_pandas()
    assert list(frame.columns[:4]) == ["name", "label", "prob", "error"]
    assert list(frame.columns[4:]) == run.classes and len(frame) == 5
    page = r._repr_html_()
    assert page.count("<img") == 2 and "no file matches" in page and "%" in page
    assert "2 unreadable" not in repr(r) and "3 unreadable" in repr(r)


@pytest.mark.parametrize(
    ("x", "says"),
    [
        (42, "cannot predict on a int"),
        ({"a": 1}, "cannot predict on a dict"),
        (np.zeros((8, 8), np.float32), "dtype float32: numpy images are uint8"),
        (np.zeros((2, 3, 8, 8), np.uint8), "looks NCHW"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), "looks channels-last: x.permute(2, 0, 1)"),
        (torch.randn(1, 8, 8), "a float tensor holds pixels in [0, 1]"),
        (torch.zeros(1, 8, 8, dtype=torch.int64), "dtype torch.int64"),
        (torch.zeros(1, 1, 1, 8, 8), "tensors are CHW or NCHW"),
        (["a.png", 3.5], "cannot predict on a float"),
    ],
)
def test_predict_refuses_what_it_cannot_read_saying_what_it_accepts(digits, x, says):
    run, _, _ = digits
    with pytest.raises(ConfigError) as exc:
        run.predict(x)
    assert says in str(exc.value) and "a path (str or Path)" in str(exc.value)


def test_a_run_shows_its_summary_history_and_curves(digits, trained_run):
    run = digits[0]
    assert run.summary["best_epoch"] == 1 and len(run.history) == 1
    assert run.meta.model == "resnet20" and run.classes == [str(i) for i in range(10)]
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    assert run.model.pretrained_cfg["input_size"] == (1, 32, 32)
    page = run._repr_html_()
    assert "best epoch" in page and "<img" in page  # the learning curves
    ev = run.evaluate(out=trained_run.parent / "eval-api")
    assert 0 <= ev["top1"] <= 1 and ev["num_samples"] == sum(map(sum, ev["confusion_matrix"]))
    assert "<img" in ev._repr_html_() and "precision" in ev._repr_html_()
    ex = run.explain(str(digits[1] / "0.png"))
    assert len(ex) == 1 and ex[0].heatmap.shape == (32, 32) and "<img" in ex._repr_html_()


def _png_bytes(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_every_plot_of_the_api_is_a_figure_and_the_cli_writes_the_same_pngs(
    digits, trained_run, tmp_path, capsys
):
    """Run.curves, the evaluation's figures (confusion matrix, top losses, their Grad-CAM
    gallery), Evaluation.confusion_figure and Explanations.figure are matplotlib Figures let
    go by pyplot (a notebook shows each once, as a cell's value); the evaluation's are the
    figures of its PNGs, which are those `resnetlab evaluate` writes. (A gallery's
    constrained layout moves a pixel or two after its first drawing, so only the confusion
    matrix renders again byte for byte.)"""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    run, folder, arrays = digits
    ev = run.evaluate(top_losses=3, out=tmp_path / "api", progress=False)
    assert set(ev.figures) == {"confusion_matrix", "top_losses", "top_losses_gradcam"}
    argv = ["evaluate", str(trained_run), "--top-losses", "3", "--out", str(tmp_path / "cli")]
    assert main([*argv, "--backend", "torch", "--precision", "fp32"]) == 0
    capsys.readouterr()
    for name, fig in ev.figures.items():
        png = Path(ev["files"][f"{name}_png"])
        assert png.parent == tmp_path / "api"
        assert (tmp_path / "cli" / png.name).read_bytes() == png.read_bytes(), name
        with Image.open(png) as im:
            assert tuple(round(v) for v in fig.get_size_inches() * fig.dpi) == im.size, name
    cm = ev.figures["confusion_matrix"]
    assert _png_bytes(cm) == Path(ev["files"]["confusion_matrix_png"]).read_bytes()
    for name in ("top_losses", "top_losses_gradcam"):
        titles = [ax.get_title() for ax in ev.figures[name].axes if ax.images]
        assert len(titles) == len(ev["top_losses"]) == 3, name
        assert all(t.startswith(f"true {it['true']}\n") for t, it in zip(titles, ev["top_losses"]))
    shown = {
        "curves": run.curves(),
        "confusion_figure": ev.confusion_figure(),
        "explain": run.explain(arrays[:3]).figure(),
        **ev.figures,
    }
    for name, fig in shown.items():
        assert isinstance(fig, Figure), name
        assert fig.number not in plt.get_fignums(), name  # not left open in pyplot
        assert _png_bytes(fig).startswith(b"\x89PNG"), name
    assert len([ax for ax in shown["explain"].axes if ax.images]) == 3


def test_an_experiment_returns_its_figure_beside_the_files(tmp_path):
    import json

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from resnetlab.experiments.degradation import run_degradation

    tiny = {**TINY, "batch_size": 128}
    r = run_degradation(depths=(20,), out=tmp_path / "deg", overrides=tiny, verbose=False)
    fig = r["figures"]["degradation"]
    assert isinstance(fig, Figure) and fig.number not in plt.get_fignums()
    assert _png_bytes(fig) == Path(r["figure"]).read_bytes()  # the figure of the PNG
    assert "figures" not in json.loads((tmp_path / "deg" / "results.json").read_text())


def test_create_model_with_weights_attaches_them_and_their_preprocessing(tmp_path):
    """weights= (a file, a hub folder) loads the weights and their preprocessing; another
    num_classes gets a fresh head; without weights it is the zoo's create_model."""
    import json

    import timm.data
    from safetensors.torch import save_file

    source = resnetlab.create_model("resnet18", num_classes=7)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    same = resnetlab.create_model("resnet18", weights=tmp_path / "w.safetensors")
    assert same.num_classes == 7
    assert all(torch.equal(v, state[k]) for k, v in same.state_dict().items())
    cfg = timm.data.resolve_model_data_config(same)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    new = resnetlab.create_model(
        "resnet18", num_classes=3, in_chans=1, weights=str(tmp_path / "w.safetensors")
    )
    assert new.fc.out_features == 3 and torch.equal(
        new.layer4[1].conv2.weight, state["layer4.1.conv2.weight"]
    )
    assert (
        new.pretrained_cfg["input_size"] == (1, 224, 224) and len(new.pretrained_cfg["mean"]) == 1
    )
    hub = tmp_path / "hub"  # a timm hub folder published with a bicubic 0.95 crop
    hub.mkdir()
    save_file(state, str(hub / "model.safetensors"))
    (hub / "config.json").write_text(
        json.dumps(
            {
                "architecture": "resnet18",
                "num_classes": 7,
                "pretrained_cfg": {
                    "input_size": [3, 224, 224],
                    "interpolation": "bicubic",
                    "crop_pct": 0.95,
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5],
                },
            }
        )
    )
    cfg = timm.data.resolve_model_data_config(resnetlab.create_model("resnet18", weights=hub))
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == (0.5, 0.5, 0.5)
    assert int(224 / cfg["crop_pct"]) == 236  # the resize weight_sources takes from the hub
    plain = resnetlab.create_model("resnet20", num_classes=4)
    assert plain.pretrained_cfg["input_size"] == (3, 32, 32)
    with pytest.raises(ValueError, match="did you mean"):
        resnetlab.create_model("resnet18", weights=tmp_path / "w.safetensors", drop_pth_rate=0.1)


def test_a_train_config_of_the_wrong_type_is_a_config_error_naming_the_setting():
    from resnetlab.train import TrainConfig

    with pytest.raises(ConfigError, match="--lr must be a number; 'fast' is a str"):
        TrainConfig(lr="fast").check()
    with pytest.raises(ConfigError, match="--milestones must be a list of numbers"):
        TrainConfig(milestones="0.5").check()
    TrainConfig(lr=1, milestones=(1, 2)).check()  # an int is a number, a tuple a list
