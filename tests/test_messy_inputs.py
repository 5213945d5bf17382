"""Inputs as users have them: small images, paths with spaces and Chinese, names in two
Unicode forms or with emoji, links that point nowhere, JPEGs without an extension, stdin, URLs.
One tiny run serves every test that needs a trained model."""

import contextlib
import io
import json
import logging
import os
import shlex
import sys
import threading
import unicodedata
import warnings

import numpy as np
import pytest
import yaml
from PIL import Image

from datagen import make_folder
from resnetlab.cli.commands import main
from resnetlab.core import plots
from resnetlab.core.fmt import table, width
from resnetlab.data import load_source

TINY = [
    "--model",
    "resnet20",
    "--model-kwargs",
    "widths=[4,8,8]",
    "--batch-size",
    "8",
    "--num-workers",
    "0",
    "--warmup-epochs",
    "0",
    "--no-precise-bn",
]
CAFE_NFD = unicodedata.normalize("NFD", "café")
CAFE_NFC = unicodedata.normalize("NFC", "café")


def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A folder of 32x32 images trained without --input-size, into a run folder under a path
    with spaces and Chinese; stopped after epoch 1 (--max-steps), then resumed to its end."""
    root = tmp_path_factory.mktemp("small")
    data = make_folder(root / "data", {"a": 6, "b": 6}, size=(32, 32))
    out = root / "my runs" / "实验 一"
    first = _run_cli(
        [
            "train",
            "--data",
            str(data),
            *TINY,
            "--epochs",
            "2",
            "--max-steps",
            "1",
            "--out",
            str(out),
            "--name",
            "模型 1",
        ]
    )
    run = out / "模型 1"
    second = _run_cli(["train", "--resume", str(run)])
    return {"data": data, "run": run, "first": first, "second": second}


# ------------------------------------------------------------------ 7: input size from data


def test_size_from_images_rule():
    from resnetlab.data.transforms import size_from_images

    assert size_from_images([(32, 32)] * 5, 3) == ("cifar", 32, 32)
    assert size_from_images([(28, 28)] * 3, 1) == ("small", 32, 28)  # greyscale: no flips
    assert size_from_images([(480, 640), (500, 375)], 3)[:2] == ("imagenet", 224)


def test_small_images_train_at_their_size(small_run):
    status, _, err = small_run["first"]
    assert status == 0, err
    first_line = err.splitlines()[0]
    assert "input 32x32, cifar preset (from the images: median side 32 px)" in first_line
    run = small_run["run"]
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert (config["input_size"], config["preset"]) == (32, "cifar")
    meta = json.loads((run / "model.json").read_text(encoding="utf-8"))
    assert meta["input_size"] == [3, 32, 32] and meta["preset"] == "cifar"
    # The resumed run keeps the size it was saved with.
    status, _, err = small_run["second"]
    assert status == 0, err
    assert "input 32x32, cifar preset;" in err.splitlines()[0]


def test_imagenet_size_kept_with_weights(small_run, tmp_path):
    from resnetlab.train import Trainer, resolve_config

    cfg = resolve_config(
        {
            "data": str(small_run["data"]),
            "model": "resnet20",
            "model_kwargs": ["widths=[4,8,8]"],
            "batch_size": 8,
            "num_workers": 0,
            "weights": str(small_run["run"] / "model.safetensors"),
            "out": str(tmp_path),
            "name": "ft",
            "precise_bn": False,
        }
    )
    trainer = Trainer(cfg, verbose=False)
    assert (trainer.data.input_size, trainer.data.preset) == (224, "imagenet")
    assert trainer.data.size_note == ""
    getattr(trainer, "close", lambda: None)()  # the run folder's lock, where there is one


# ------------------------------------------------------------------ 8: commands shell-quoted


def test_printed_commands_paste_back_as_the_same_paths(small_run):
    run = str(small_run["run"])
    _, _, err = small_run["first"]
    resume = err.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert shlex.split(resume) == ["resnetlab", "train", "--resume", run]
    status, out, _ = small_run["second"]
    steps = out.split("next:\n", 1)[1].strip().splitlines()
    words = [shlex.split(line) for line in steps]
    assert ["resnetlab", "evaluate", run] in words
    assert ["resnetlab", "predict", run, "IMAGE_OR_FOLDER"] in words
    assert ["resnetlab", "train", "--resume", run, "--epochs", "12"] in words


# ------------------------------------------------------------------ 9: Unicode class names


def test_nfd_and_nfc_class_names_are_one_class(tmp_path):
    make_folder(tmp_path / "train", {CAFE_NFD: 3, "tea": 3}, size=(8, 8))
    make_folder(tmp_path / "val", {CAFE_NFC: 1, "tea": 1}, size=(8, 8))
    source = load_source(str(tmp_path))
    assert source.classes == [CAFE_NFC, "tea"]
    assert source.class_counts("val") == {CAFE_NFC: 1, "tea": 1}
    listing = tmp_path / "list.csv"
    rows = [f"train/{CAFE_NFD}/img_{k}.png,{CAFE_NFD}" for k in range(3)]
    rows += [f"val/{CAFE_NFC}/img_0.png,{CAFE_NFC}"]
    rows += [f"train/tea/img_{k}.png,tea" for k in range(3)]
    listing.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert load_source(f"csv:{listing}").classes == [CAFE_NFC, "tea"]


def test_tables_align_decomposed_and_emoji_names():
    assert width(CAFE_NFD) == width(CAFE_NFC) == 4
    assert width("🦆 duck") == 7
    rows = [[CAFE_NFD, "1"], [CAFE_NFC, "2"], ["🦆 duck", "3"], ["黄芪", "4"]]
    lines = table(["class", "n"], rows, right_from=1).splitlines()
    assert len({width(line) for line in lines}) == 1, lines


def test_emoji_class_names_give_one_hint_not_a_warning_per_glyph(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    cm = np.array([[2, 1], [0, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw "Glyph ... missing" warning fails here
        plots.plot_confusion(cm, ["🦆 duck", "🐈 cat"], tmp_path / "a.png")
        plots.plot_confusion(cm, ["🦆 duck", "🐈 cat"], tmp_path / "b.png")
    hints = [r.getMessage() for r in caplog.records if "🦆" in r.getMessage()]
    assert len(hints) == 1, [r.getMessage() for r in caplog.records]


# ------------------------------------------------------------------ 10: inputs not dropped


def _png_bytes(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def test_predict_names_every_odd_input(small_run, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.png").write_bytes(_png_bytes())
    os.symlink(tmp_path / "deleted.jpg", folder / "gone.jpg")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(folder / "IMG_0001", format="JPEG")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # a pipe (as /dev/stdin is when data is piped): not a regular file

    def feed():
        with open(fifo, "wb") as f:
            f.write(_png_bytes((30, 30, 200)))

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    monkeypatch.setattr(sys, "stdin", _Stdin(_png_bytes((30, 30, 200))))
    url = "https://example.com/cat.jpg"
    status, out, err = _run_cli(
        [
            "predict",
            str(small_run["run"]),
            str(folder),
            "-",
            str(fifo),
            url,
            "--backend",
            "torch",
            "--json",
        ]
    )
    writer.join(5)
    rows = {r["path"]: r for r in json.loads(out)}
    assert status == 1, err
    assert rows[str(folder / "good.png")]["error"] is None
    assert "broken symbolic link" in rows[str(folder / "gone.jpg")]["error"]
    assert rows["-"]["error"] is None and rows["-"]["topk"]
    assert rows[str(fifo)]["error"] is None and rows[str(fifo)]["topk"]
    assert rows[url]["error"].startswith("URLs are not fetched")
    assert str(folder / "IMG_0001") in err and "JPEG" in err


def test_stats_names_files_left_out(tmp_path, capsys):
    make_folder(tmp_path, {"a": 3, "b": 3}, size=(8, 8))
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "IMG_0001", format="JPEG")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    assert main(["stats", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'a' / 'IMG_0001'}: a JPEG image" in out
    assert "rename it IMG_0001.jpg" in out
    assert str(tmp_path / "b" / "notes.txt") in out
