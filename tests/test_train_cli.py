"""`resnetlab train` as a user types it: bare --resume, refused flags, degenerate data, sizes."""

import json
import logging

import pytest
import torch
import yaml

from datagen import make_folder
from resnetlab import list_models
from resnetlab.cli import main

TINY = ["--model", "resnet20", "--model-kwargs", "widths=[4,8,8]", "--batch-size", "8",
        "--input-size", "16", "--num-workers", "0", "--warmup-epochs", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_folder(root, {"黄芪": 12, "wolfberry 枸杞子": 12}, size=(20, 20))
    return root


def _train(folder, out, *extra):
    return main(["train", "--data", str(folder), *TINY, "--out", str(out), "--name", "r", *extra])


def _config(run):
    return yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))


def test_bare_resume_keeps_the_saved_length(tmp_path, folder, capsys):
    assert _train(folder, tmp_path, "--epochs", "2", "--max-steps", "2") == 0
    run = tmp_path / "r"
    assert "--resume" in capsys.readouterr().err
    assert _config(run)["epochs"] == 2
    assert main(["train", "--resume", str(run)]) == 0
    assert _config(run)["epochs"] == 2
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["epochs_completed"] == 2
    # The run went to its end: the --max-steps of the first call was not carried over.
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


def test_resume_refuses_flags_it_would_ignore(tmp_path, folder, capsys):
    assert _train(folder, tmp_path, "--epochs", "2") == 0
    run = tmp_path / "r"
    before = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    argv = ["train", "--resume", str(run), "--epochs", "3", "--lr", "0.5", "--batch-size",
            "32", "--data", "mnist:/nonexistent"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for flag in ("--lr 0.5", "--batch-size 32", "--data 'mnist:/nonexistent'", "--epochs"):
        assert flag in err
    assert (run / "config.yaml").read_bytes() == before
    # Shorter than what is done: refused, config untouched.
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    assert "already completed 2 epochs" in capsys.readouterr().err
    assert (run / "config.yaml").read_bytes() == before
    # A value equal to the saved one is not a change; a longer run is allowed.
    assert main(["train", "--resume", str(run), "--epochs", "3", "--batch-size", "8"]) == 0
    assert _config(run)["epochs"] == 3


def test_resume_clears_stale_temp_files_and_points_to_best(tmp_path, folder, capsys):
    assert _train(folder, tmp_path, "--epochs", "1") == 0
    run = tmp_path / "r"
    stale = run / ".checkpoint-last.pt.k2j4_9xq.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = run / "notes.tmp"  # not the shape of our temp files: never touched
    mine.write_text("the user's")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert not stale.exists() and mine.read_text() == "the user's"
    last = run / "checkpoint-last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "checkpoint-last.pt: the file is damaged" in err
    assert f"resnetlab train --resume {run / 'checkpoint-best.pt'}" in err
    assert torch.load(run / "checkpoint-best.pt", weights_only=True)["epoch"] >= 1


def test_folder_left_at_start_up_is_reused(tmp_path, folder, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: 1\n")  # what a Ctrl-C during start-up leaves
    assert main(["train", "--resume", str(run)]) == 2
    assert "before its first checkpoint" in capsys.readouterr().err
    assert _train(folder, tmp_path, "--epochs", "1") == 0
    (run / "mine.txt").write_text("x")
    # A folder with anything else in it is never taken over.
    run2 = tmp_path / "r2"
    run2.mkdir()
    (run2 / "config.yaml").write_text("x")
    (run2 / "photo.jpg").write_text("x")
    argv = ["train", "--data", str(folder), *TINY, "--out", str(tmp_path), "--name", "r2"]
    assert main(argv) == 2
    assert "already holds files" in capsys.readouterr().err


def test_one_class_is_refused(tmp_path, capsys):
    make_folder(tmp_path / "one", {"only": 6}, size=(20, 20))
    assert _train(tmp_path / "one", tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert "only one class ('only')" in err and "at least 2 classes" in err


def test_one_image_per_class_warns_and_recommends_what_works(tmp_path, capsys):
    make_folder(tmp_path / "few", {"a": 1, "b": 1}, size=(20, 20))
    argv = ["--epochs", "1", "--batch-size", "2"]
    assert _train(tmp_path / "few", tmp_path / "runs", *argv) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "no validation images" in text
    assert "resnetlab evaluate" not in text and "resnetlab report" not in text
    assert "resnetlab predict" in text
    assert "2 classes" in text


def test_val_ratio_out_of_range_is_refused(tmp_path, capsys):
    assert main(["train", "--val-ratio", "1.5", "--out", str(tmp_path)]) == 2
    assert "--val-ratio must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert main(["stats", "digits", "--test-ratio", "-0.1"]) == 2
    assert "--test-ratio" in capsys.readouterr().err


def test_mnist_size_runs(capsys):
    assert main(["summary", "resnet18", "--in-chans", "1", "--input-size", "1", "28", "28"]) == 0
    out = capsys.readouterr().out
    assert "1x1 maps" in out and "32-fold" in out
    assert main(["summary", "resnet20", "--input-size", "1", "0", "28"]) == 2


def test_train_at_28_pixels(tmp_path, folder):
    assert _train(folder, tmp_path, "--epochs", "1", "--input-size", "28", "--in-chans", "1") == 0
    meta = json.loads((tmp_path / "r" / "model.json").read_text(encoding="utf-8"))
    assert meta["input_size"] == [1, 28, 28]


def test_list_models_sorts_depth_as_a_number():
    names = list_models("resnet*")
    assert names.index("resnet18") < names.index("resnet34") < names.index("resnet101")
    assert names.index("resnet20") < names.index("resnet110") < names.index("resnet1202")


def test_unreadable_files_listed_once(tmp_path, caplog):
    make_folder(tmp_path / "d", {"a": 60, "b": 60}, size=(20, 20))
    (tmp_path / "d" / "a" / "broken.png").write_bytes(b"not a png")
    from resnetlab.data import load_source

    with caplog.at_level(logging.WARNING, logger="resnetlab.data"):
        load_source(str(tmp_path / "d"))
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1
    (tmp_path / "d" / "b" / "broken2.png").write_bytes(b"")
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="resnetlab.data"),
        pytest.raises(ValueError, match="broken2.png"),
    ):
        load_source(str(tmp_path / "d"))
    assert not any("broken" in r.getMessage() for r in caplog.records)


def test_predict_given_an_image_instead_of_a_run(tmp_path, folder, capsys):
    image = next((folder / "黄芪").iterdir())
    assert main(["predict", str(image)]) == 2
    err = capsys.readouterr().err
    assert "is an image, not a run" in err
