"""Atomic checkpoints: a SIGKILL during a save leaves the previous checkpoint loadable."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from resnetlab.artifacts.weights import WeightsError
from resnetlab.train.checkpoint import (
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)

WRITER = r"""
import sys, torch
from resnetlab.train.checkpoint import capture_rng, save_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    big = torch.full((4_000_000,), float(i))  # 16 MB: a save takes long enough to interrupt
    save_checkpoint({"model": {"w": big}, "optimizer": {}, "scheduler": {}, "epoch": i,
                     "config": {}, "classes": [], "rng": capture_rng()}, path)
    print(i, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save_leaves_last_good_checkpoint(tmp_path):
    path = tmp_path / "checkpoint-last.pt"
    for delay in (0.05, 0.21):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # at least one complete save
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(path)
        w = state["model"]["w"]
        assert torch.all(w == state["epoch"])  # a whole save, never a torn one


def test_rng_round_trip():
    import random

    import numpy as np

    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_foreign_and_truncated_files(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    with pytest.raises(WeightsError, match="not a resnetlab training checkpoint"):
        load_checkpoint(plain)
    good = tmp_path / "c.pt"
    save_checkpoint(
        {
            "model": {},
            "optimizer": {},
            "scheduler": {},
            "epoch": 1,
            "config": {},
            "classes": [],
            "rng": capture_rng(),
        },
        good,
    )
    assert load_checkpoint(good)["epoch"] == 1
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(WeightsError, match="c.pt: the file is damaged"):
        load_checkpoint(good)
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty file"):
        load_checkpoint(empty)
