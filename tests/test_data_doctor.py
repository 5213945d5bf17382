"""Statistics that do not mislead: ``stats`` lists every problem of a folder in one pass (an
empty class folder no longer stops it), names the classes a split has no image of, and
``evaluate`` says "no images" for a class without support instead of printing zeros."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli.commands import main
from resnetlab.core.errors import DataError
from resnetlab.data import load_source


def _images(folder, n, colour, size=(20, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for k in range(n):
        a = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(a.astype(np.uint8)).save(folder / f"{k}.png")


def messy(root):
    """train: 猫 (3 images and a broken one), 狗 (an empty folder but for a note), 鸟 (3);
    val: 猫 only."""
    _images(root / "train" / "猫", 3, (200, 60, 40))
    (root / "train" / "猫" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "train" / "狗").mkdir(parents=True)
    (root / "train" / "狗" / "notes.txt").write_text("to do", encoding="utf-8")
    _images(root / "train" / "鸟", 3, (50, 70, 210))
    _images(root / "val" / "猫", 2, (200, 60, 40))
    return root


def test_stats_lists_every_problem_in_one_pass(tmp_path, capsys):
    data = messy(tmp_path / "d")
    assert main(["stats", str(data)]) == 1  # before: exit 2, one line about the empty folder
    out = capsys.readouterr().out
    assert "class folder is empty" in out and "狗" in out
    assert "broken.png" in out  # the unreadable file, in the same report
    assert "the val split has no images of 2 class(es): 狗, 鸟" in out
    assert "notes.txt" in out  # the file left out by its name, as before
    main(["stats", str(data), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == {"val": ["狗", "鸟"]}
    assert len(report["problems"]) == 1 and report["classes"]["狗"] == 0


def test_train_names_every_empty_class_folder_at_once(tmp_path):
    data = messy(tmp_path / "d")
    (data / "train" / "鸟" / "0.png").rename(data / "0.png")
    for p in (data / "train" / "鸟").iterdir():
        p.unlink()
    with pytest.raises(DataError) as err:  # before: only the first one
        load_source(str(data))
    assert "2 problems" in str(err.value) and "狗" in str(err.value) and "鸟" in str(err.value)


def test_evaluate_says_no_images_for_a_class_without_support(trained_run, tmp_path, capsys):
    # The digits model (classes 0-9) on a folder with images of 0 and 1 only.
    from sklearn.datasets import load_digits

    d = load_digits()
    for split in ("train", "test"):
        for c in (0, 1):
            folder = tmp_path / "two" / split / str(c)
            folder.mkdir(parents=True)
            for k, img in enumerate(d.images[d.target == c][:4]):
                Image.fromarray(np.uint8(img * 15)).save(folder / f"{k}.png")
    assert (
        main(
            [
                "evaluate",
                str(trained_run),
                "--data",
                str(tmp_path / "two"),
                "--split",
                "test",
                "--backend",
                "torch",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    assert "no images" in rows["5"] and "0.000" not in rows["5"].split("no images")[1]
    assert "no images" not in rows["1"]


def test_audit_labels_from_a_runs_features(trained_run):
    # The session's tiny run gives each digit its pooled features; a linear model is
    # cross-validated on them (the fast way with a trained backbone).
    from resnetlab.audit import audit, format_audit

    report = audit("digits", labels=True, run=str(trained_run)).report
    model = report["label_model"]
    assert model["source"] == "run" and model["images"] == 1797 and model["folds"] == 5
    assert "resnet20" in model["description"]
    if model["accuracy"] < 0.8:  # one epoch of a 4-8-8 net: its suggestions are said weak
        assert "its own mistakes" in format_audit(report)
