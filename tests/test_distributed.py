"""DDP on CPU: two gloo processes under torchrun end with identical weights."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from datagen import make_folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run(tmp_path):
    data = make_folder(tmp_path / "data", {"a": 24, "b": 24}, size=(32, 32))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "resnetlab",
        "train",
        "--data",
        str(data),
        "--model-kwargs",
        "widths=[4,8,8]",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--input-size",
        "32",
        "--num-workers",
        "0",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "ddp",
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sums = dict(re.findall(r"rank (\d)/2: final weights sha256 ([0-9a-f]{64})", proc.stdout))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stdout
    run = tmp_path / "runs" / "ddp"
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
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_completed"] == 2
    # Keys carry no DDP "module." prefix.
    import torch

    state = torch.load(run / "checkpoint-last.pt", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_preempted_ddp_job_stops_together_and_resumes(tmp_path):
    """SIGTERM to torchrun (what Kubernetes or Slurm sends a preempted job): it passes the
    signal to every worker; the ranks agree on the step, rank 0 saves, every worker exits 143.
    The job's command again with --resume finishes the run, the ranks equal."""
    import signal
    import time

    import torch

    data = make_folder(tmp_path / "data", {"a": 24, "b": 24}, size=(32, 32))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "resnetlab",
        "train",
        "--data",
        str(data),
        "--model-kwargs",
        "widths=[4,8,8]",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--input-size",
        "32",
        "--num-workers",
        "0",
        "--precision",
        "fp32",
        "--out",
        str(tmp_path / "runs"),
        "--name",
        "ddp",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch   1/3"):
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    text = "".join(seen) + proc.communicate(timeout=120)[0]
    stops = re.findall(r"resnetlab train: stopped by SIGTERM at step (\d+)", text)
    assert len(stops) == 2 and stops[0] == stops[1], text
    run = tmp_path / "runs" / "ddp"
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert state["epoch"] < 3 and state["global_step"] == int(stops[0])
