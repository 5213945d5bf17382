"""Interrupted: Ctrl-C during epoch 2, and SIGKILL while a checkpoint is being written; then
exactly `resnetlab train --resume RUN`; the weights end equal to an uninterrupted run's."""

import os
import signal
import time

import torch
from safetensors.torch import load_file

from datagen import make_folder

# Deterministic fp32 so that a resumed run can be compared weight for weight.
ARGS = ["--model", "resnet20", "--model-kwargs", "widths=[8,16,16]", "--input-size", "32",
        "--batch-size", "8", "--epochs", "3", "--num-workers", "0", "--precision", "fp32",
        "--deterministic", "--out", "runs"]  # fmt: skip


def _weights(run):
    return torch.load(run / "checkpoint-last.pt", weights_only=True)["model"]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_then_bare_resume(cli, tmp_path):
    data = make_folder(tmp_path / "photos", {"ants": 200, "bees": 200}, size=(40, 36))
    cli("train", "--data", data, *ARGS, "--name", "straight")
    straight = _weights(tmp_path / "runs" / "straight")

    proc = cli.popen("train", "--data", data, *ARGS, "--name", "run")
    # The epoch line is printed after epoch 1's checkpoint: from there on it is epoch 2.
    for line in proc.stderr:
        if line.startswith("epoch   1/3"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    run = tmp_path / "runs" / "run"
    assert f"continue with: resnetlab train --resume {os.path.join('runs', 'run')}" in err
    assert "Traceback" not in err
    stopped = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert (stopped["epoch"], stopped["step_in_epoch"]) != (3, 0)

    cli("train", "--resume", run)
    assert _equal(_weights(run), straight)
    assert _equal(load_file(run / "model.safetensors"), load_file(
        tmp_path / "runs" / "straight" / "model.safetensors"))  # fmt: skip


def test_sigkill_during_a_checkpoint_write_then_bare_resume(cli, tmp_path):
    data = make_folder(tmp_path / "photos", {"ants": 40, "bees": 40}, size=(40, 36))
    args = [*ARGS, "--checkpoint-every", "1"]
    cli("train", "--data", data, *args, "--name", "straight")
    straight = _weights(tmp_path / "runs" / "straight")

    run = tmp_path / "runs" / "run"
    proc = cli.popen("train", "--data", data, *args, "--name", "run")
    # Kill the moment a checkpoint's temp file is seen (or, failing that, mid-run).
    deadline = time.time() + 60
    caught = False
    while time.time() < deadline and proc.poll() is None:
        writing = run.is_dir() and any(p.name.endswith(".tmp") for p in run.iterdir())
        if writing and (run / "checkpoint-last.pt").exists():
            caught = True
            break
        time.sleep(0.0005)
    proc.kill()
    proc.communicate(timeout=60)
    assert caught, "the run ended before a checkpoint write was seen"

    p = cli("train", "--resume", run)
    assert not any(q.name.endswith(".tmp") for q in run.iterdir()), p.stderr
    assert _equal(_weights(run), straight)
