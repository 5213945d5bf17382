"""The allocator setting the command line applies: freed memory is reused, not faulted in again."""

import subprocess
import sys

import pytest

from resnetlab.cli import commands as cli

PROBE = """
import resource, sys, torch
from resnetlab.core.runtime import tune_allocator
print(tune_allocator() if sys.argv[1] == "tuned" else False)
torch.set_num_threads(1)  # one thread, one malloc arena: the count is the allocator's alone
def step():
    x = torch.ones(8 << 20)  # 32 MiB, far above glibc's default mmap threshold
    return float(x[0])
for _ in range(10):  # the heap settles into its steady size
    step()
faulting = 0
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faulting += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > 1000
print(faulting)
"""


def faulting_steps(mode: str, env: dict | None = None) -> tuple[str, int]:
    """Of 20 steps that each allocate and free 32 MiB, how many faulted pages in afresh."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting")
def test_tuned_allocator_reuses_freed_memory():
    applied, tuned = faulting_steps("tuned")
    _, default = faulting_steps("default")
    assert applied == "True"
    # Untuned, every step maps its 32 MiB afresh and faults in about 8,000 pages; tuned, the
    # freed block is reused (an occasional step still lands on new pages as the heap shifts).
    assert default >= 18
    assert tuned <= 4


def test_tuning_can_be_turned_off(monkeypatch):
    import os

    env = dict(os.environ, RESNETLAB_MALLOC_TUNING="0")
    applied, _ = faulting_steps("tuned", env)
    assert applied == "False"


def test_command_line_applies_it(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append(1))
    assert cli.main(["models", "resnet18"]) == 0
    assert calls == [1]


ENTRY = """
import atexit, sys, time
from concurrent.futures import ThreadPoolExecutor
from resnetlab.cli.commands import main
atexit.register(lambda: print("exit handlers ran", file=sys.stderr))
# A pool left open with work in it (OpenVINO's import leaves an idle one): joined first.
ThreadPoolExecutor(1).submit(lambda: time.sleep(0.5) or print("pool done", file=sys.stderr))
sys.argv = ["resnetlab", *sys.argv[1:]]
raise SystemExit(main())
"""


@pytest.mark.parametrize(
    ("argv", "status"), [(["models", "resnet1*", "--json"], 0), (["models", "nothing-like-it"], 2)]
)
def test_a_quick_command_ends_without_teardown_yet_complete(argv, status):
    # As the program (`__main__.main` is cli.main), a quick command ends with os._exit after
    # the threads and exit handlers: everything it printed is out, its status kept.
    p = subprocess.run([sys.executable, "-c", ENTRY, *argv], capture_output=True, text=True)
    assert p.returncode == status and "exit handlers ran" in p.stderr
    assert p.stderr.index("pool done") < p.stderr.index("exit handlers ran")
    if status == 0:
        import json

        assert {row["model"] for row in json.loads(p.stdout)} >= {"resnet18", "resnet101"}


def test_called_from_python_main_returns():
    assert not cli._is_entry_point(None)  # pytest's __main__ is not the command line
    assert cli.main(["models", "resnet18"]) == 0
