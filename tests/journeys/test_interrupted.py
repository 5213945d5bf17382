"""Interrupted: Ctrl-C during epoch 2, a preempted job (SIGTERM during epoch 2, as Docker,
Kubernetes and Slurm send it), and SIGKILL while a checkpoint is being written; then
`resnetlab train --resume RUN` (for the preempted job: the job's own command with --resume);
the weights end equal to an uninterrupted run's."""

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import CLI
from datagen import make_folder

# Deterministic fp32 so that a resumed run can be compared weight for weight.
ARGS = [
    "--model",
    "resnet20",
    "--model-kwargs",
    "widths=[8,16,16]",
    "--input-size",
    "32",
    "--batch-size",
    "8",
    "--epochs",
    "3",
    "--num-workers",
    "0",
    "--precision",
    "fp32",
    "--deterministic",
    "--out",
    "runs",
]


def _weights(run):
    return torch.load(run / "checkpoint-last.pt", weights_only=True)["model"]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The photos and the uninterrupted run that an interrupted one must end equal to."""
    root = tmp_path_factory.mktemp("straight")
    data = make_folder(root / "photos", {"ants": 200, "bees": 200}, size=(40, 36))
    CLI(root)("train", "--data", data, *ARGS, "--name", "straight")
    return data, root / "runs" / "straight"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "preempted"])
def test_stopped_in_epoch_2_then_resumed(cli, tmp_path, straight, sig):
    data, done = straight
    job = ["train", "--data", data, *ARGS, "--name", "run"]
    proc = cli.popen(*job)
    # The epoch line is printed after epoch 1's checkpoint: from there on it is epoch 2.
    for line in proc.stderr:
        if line.startswith("epoch   1/3"):
            break
    time.sleep(0.2)  # into epoch 2's steps (its 40 steps take seconds)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err  # 130 for Ctrl-C, 143 for SIGTERM
    run = tmp_path / "runs" / "run"
    said = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
    assert f"resnetlab train: {said} at step " in err
    assert f"continue with: resnetlab train --resume {os.path.join('runs', 'run')}" in err
    assert "Traceback" not in err
    stopped = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert stopped["epoch"] == 1  # saved in epoch 2 (mid-epoch, unless the machine is slow)
    assert not (run / ".train.lock").exists()

    # Ctrl-C: the bare command it printed; preempted: the job runs again, with --resume.
    cli(*(["train", "--resume", run] if sig == signal.SIGINT else [*job, "--resume", run]))
    assert _equal(_weights(run), _weights(done))
    assert _equal(load_file(run / "model.safetensors"), load_file(done / "model.safetensors"))


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
