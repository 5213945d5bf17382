"""`resnetlab train` as a user types it: bare --resume, refused flags, degenerate data, sizes;
one run per folder; a full disk, no permission, a read-only mount."""

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import threading

import pytest
import torch
import yaml

from datagen import make_folder
from resnetlab import list_models
from resnetlab.cli.commands import main
from resnetlab.core import files as resnetlab_io
from resnetlab.core.files import FolderLock
from resnetlab.train import Trainer, resolve_config
from resnetlab.train import folder as run_folder
from resnetlab.train.checkpoint import load_checkpoint

TINY = [
    "--model",
    "resnet20",
    "--model-kwargs",
    "widths=[4,8,8]",
    "--batch-size",
    "8",
    "--input-size",
    "16",
    "--num-workers",
    "0",
    "--warmup-epochs",
    "0",
]


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
    argv = [
        "train",
        "--resume",
        str(run),
        "--epochs",
        "3",
        "--lr",
        "0.5",
        "--batch-size",
        "32",
        "--data",
        "mnist:/nonexistent",
    ]
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


# ----------------------------------------------------------- one run per folder, write errors


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("resnetlab train: error:")]


def test_two_trainings_of_one_name_started_together(tmp_path, folder, capsys):
    argv = [
        "train",
        "--data",
        str(folder),
        *TINY,
        "--out",
        str(tmp_path),
        "--name",
        "twin",
        "--epochs",
        "2",
        "--test-ratio",
        "0",
    ]
    codes: list = [None, None]
    together = threading.Barrier(2)

    def train(i):
        together.wait()
        codes[i] = main(argv)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(codes) == [0, 2], codes
    out, err = capsys.readouterr()
    refused = _errors(err)
    assert len(refused) == 1 and f"{tmp_path / 'twin'} is in use by another training" in refused[0]
    assert "test top-1        -   (no test split)" in out
    assert len((tmp_path / "twin" / "metrics.csv").read_text().splitlines()) == 3
    assert not (tmp_path / "twin" / ".train.lock").exists()


def test_default_names_of_runs_started_in_the_same_second_differ(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(run_folder, "_run_name", lambda cfg: "resnet20-data-20260102-030405")
    base = dict(
        data=str(folder),
        model="resnet20",
        model_kwargs={"widths": [4, 8, 8]},
        input_size=16,
        batch_size=8,
        num_workers=0,
        out=str(tmp_path),
    )
    first = Trainer(resolve_config(base), verbose=False)
    second = Trainer(resolve_config(base), verbose=False)
    assert first.run_dir.name == "resnet20-data-20260102-030405"
    assert second.run_dir.name == "resnet20-data-20260102-030405-2"
    first.close()
    second.close()


def test_a_run_in_use_is_refused_and_a_lock_left_by_a_killed_one_is_not(tmp_path, folder, capsys):
    assert _train(folder, tmp_path, "--epochs", "1") == 0
    run = tmp_path / "r"
    held = FolderLock.acquire(run / ".train.lock")  # another training, as it runs
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"resnetlab train: error: {run} is in use by another training (process "
        f"{os.getpid()}); resume it once that one has stopped"
    )
    held.release()
    (run / ".train.lock").write_text("999999\n")  # what a SIGKILL leaves: no lock held on it
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert not (run / ".train.lock").exists()


def test_a_write_refused_by_permissions_is_one_line(tmp_path, folder, capsys, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(resnetlab_io.tempfile, "mkstemp", refused)  # root ignores chmod
    assert _train(folder, tmp_path, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"resnetlab train: error: cannot write {tmp_path / 'r' / 'config.yaml'}: "
        f"permission denied; make {tmp_path / 'r'} writable, then run the same "
        "command again (the folder is reused)"
    )
    assert not any((tmp_path / "r").iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_full_disk_then_read_only_are_one_line_and_the_checkpoint_survives(
    small_disk, folder, capsys
):
    out = small_disk / "runs"
    assert _train(folder, out, "--epochs", "1") == 0
    run = out / "r"
    # Fill the disk but a few pages: config.yaml and metrics.csv fit, a checkpoint does not.
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    os.truncate(small_disk / "filler", os.path.getsize(small_disk / "filler") - 16384)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = _errors(capsys.readouterr().err)
    assert err == [
        f"resnetlab train: error: cannot write {run / 'checkpoint-last.pt'}: no space "
        "left on the device; checkpoint-last.pt (after epoch 1) is intact: free some "
        f"space, then continue with: resnetlab train --resume {run}"
    ]
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp files, no lock
    (small_disk / "filler").unlink()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # the same command
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 2

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    capsys.readouterr()
    assert _train(folder, out / "more", "--epochs", "1") == 2
    assert _errors(capsys.readouterr().err) == [
        f"resnetlab train: error: cannot create the folder {out / 'more'}: read-only file system; "
        "give --out a folder you can write to"
    ]
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"resnetlab train: error: cannot write in {run}: read-only file system")
    assert len(err.splitlines()) == 1
    assert load_checkpoint(run / "checkpoint-last.pt")["epoch"] == 2
