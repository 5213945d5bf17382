"""Progress where the output goes: a bar on a terminal that moves from the first step, plain
lines every RESNETLAB_PROGRESS_SECONDS in logs (training, decoding, stats, predict); and
predict's rows written as they are done, to standard output or to the FILE of --csv/--json."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli.commands import main
from resnetlab.core.progress import Meter, duration
from resnetlab.inference.predict import Predictor
from resnetlab.train.loggers import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_with_the_count_rate_and_time_left():
    log = io.StringIO()
    meter = Meter("decoding", 10, stream=log, every=0)
    for _ in range(4):
        meter.update()
    meter.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("decoding  1/10 images (10%)")
    assert lines[-1].startswith("decoding  4/10 images (40%)") and "images/s" in lines[-1]
    assert "ETA" in lines[-1] and "\r" not in log.getvalue()
    quiet = io.StringIO()  # every 30 s by default: nothing in a short loop
    with Meter("decoding", 10, stream=quiet) as m:
        m.update(3)
    assert quiet.getvalue() == ""
    assert duration(42) == "42s" and duration(185) == "3m05s" and duration(7620) == "2h07m"


def test_the_bar_of_a_terminal_moves_from_the_first_step():
    term = _Terminal()
    progress = Progress(True, stream=term)
    progress.start(1, 3, 100)
    assert progress.due()  # nothing shown yet: the first step is worth a host sync
    progress.update_to(1, loss="2.302", img_s="12")
    assert "1/100" in term.getvalue() and "loss=2.302" in term.getvalue()
    progress.close()


def test_training_prints_periodic_lines_when_stderr_is_a_file(tmp_path):
    """`train` with stderr to a file (nohup, CI): step, loss, images/s and ETA lines between
    the header and the end of the epoch, not only at its end."""
    err = tmp_path / "train.log"
    argv = [
        sys.executable,
        "-m",
        "resnetlab",
        "train",
        "--data",
        "digits",
        "--model",
        "resnet20",
        "--model-kwargs",
        "widths=[4,8,8]",
        "--epochs",
        "1",
        "--max-steps",
        "6",
        "--num-workers",
        "0",
        "--no-precise-bn",
        "--out",
        str(tmp_path),
        "--name",
        "r",
    ]
    with open(err, "w") as f:
        p = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
            timeout=600,
            env={**os.environ, "RESNETLAB_PROGRESS_SECONDS": "0"},
        )
    text = err.read_text()
    assert p.returncode == 0, text
    steps = [line for line in text.splitlines() if line.startswith("epoch 1/1  ")]
    counts = [s.split()[2].split("/") for s in steps]
    assert [int(done) for done, _ in counts] == list(range(1, 7)), text  # 6 steps, each shown
    assert len({total for _, total in counts}) == 1
    assert all("img/s" in s and "loss" in s and "ETA" in s for s in steps)


@pytest.fixture
def images(tmp_path, trained_run):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(7):
        path = tmp_path / f"digit_{k}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_predict_csv_file_is_written_as_rows_are_done(
    trained_run, images, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out.csv"
    seen = []
    real = Predictor.iter_predict_paths

    def watched(self, paths, topk=None):
        for n, row in enumerate(real(self, paths, topk)):
            if n == 4:  # rows 0-3 came before: the file has them while predict still runs
                seen.append(out.read_text(encoding="utf-8"))
            yield row

    monkeypatch.setattr(Predictor, "iter_predict_paths", watched)
    base = ["predict", str(trained_run), *images, "--batch-size", "2", "--backend", "torch"]
    assert main([*base, "--csv", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(seen[0])))
    assert {r["path"] for r in rows} == set(images[:4])
    assert main([*base, "--csv"]) == 0  # --csv alone: standard output, the same rows
    assert capsys.readouterr().out == out.read_bytes().decode("utf-8")


def test_predict_json_file_and_the_flags_beside_the_images(trained_run, images, tmp_path, capsys):
    out = tmp_path / "rows.json"
    run, torch_ = ["predict", str(trained_run)], ["--backend", "torch"]
    assert main([*run, *images, "--json", str(out), *torch_]) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    direct = Predictor(trained_run, backend="torch").predict_paths(images)
    assert (
        out.read_text(encoding="utf-8") == json.dumps(direct, indent=2, ensure_ascii=False) + "\n"
    )
    assert [r["path"] for r in rows] == images
    capsys.readouterr()
    # `--json IMAGE IMAGE ...`: the images are inputs, the rows go to standard output.
    assert main([*run, "--json", *images[:2], *torch_]) == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)] == images[:2]
    assert main([*run, "--csv", images[0], images[1], "--topk", "1", *torch_]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # the header and two rows
    assert main([*run, images[0], "--json", *torch_]) == 0
    assert json.loads(capsys.readouterr().out)[0]["path"] == images[0]


def test_predict_rows_come_in_order_from_several_streams_and_stop_when_left(trained_run, images):
    p = Predictor(trained_run, backend="torch", batch_size=1, streams=2)
    paths = images * 3
    rows = p.iter_predict_paths(paths, topk=1)
    assert [r["path"] for r in rows] == paths
    decoded = []
    decode = p._decode
    p._decode = lambda path: decoded.append(path) or decode(path)
    rows = p.iter_predict_paths(images * 10, topk=1)
    next(rows)
    rows.close()  # the reader has gone: the streams stop after the batches they are on
    assert len(decoded) < 10


def test_predict_and_stats_show_progress_in_a_log(
    trained_run, images, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("RESNETLAB_PROGRESS_SECONDS", "0")
    assert (
        main(
            [
                "predict",
                str(trained_run),
                *images,
                "--backend",
                "torch",
                "--csv",
                str(tmp_path / "o.csv"),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "predict  2/7 images (29%)" in err and "ETA" in err
    folder = Path(images[0]).parent / "folder"
    for k, path in enumerate(images):
        (folder / ("a" if k % 2 else "b")).mkdir(parents=True, exist_ok=True)
        Image.open(path).save(folder / ("a" if k % 2 else "b") / f"{k}.png")
    assert main(["stats", str(folder)]) == 0
    assert "reading train images at" in capsys.readouterr().err
