"""The allocator setting the command line applies: freed memory is reused, not faulted in again."""

import subprocess
import sys

import pytest

from resnetlab import cli

PROBE = """
import resource, sys, torch
from resnetlab.runtime import tune_allocator
print(tune_allocator() if sys.argv[1] == "tuned" else False)
def step():
    x = torch.ones(8 << 20)  # 32 MiB, far above glibc's default mmap threshold
    return float(x[0])
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting")
def test_tuned_allocator_reuses_freed_memory():
    applied, tuned = faults("tuned")
    _, default = faults("default")
    assert applied == "True"
    # Untuned, each 32 MiB buffer is mapped and faulted in afresh (about 8,000 pages a step).
    assert default > 20 * 4000
    assert tuned < default / 20


def test_tuning_can_be_turned_off(monkeypatch):
    import os

    env = dict(os.environ, RESNETLAB_MALLOC_TUNING="0")
    applied, _ = faults("tuned", env)
    assert applied == "False"


def test_command_line_applies_it(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append(1))
    assert cli.main(["models", "resnet18"]) == 0
    assert calls == [1]
