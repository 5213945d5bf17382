import os
import signal

import pytest
import torch

# Two cores: one intra-op thread per test process keeps timings stable and avoids
# oversubscription when a test starts worker processes of its own.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _release_loader_workers():
    """After each test, the SIGCHLD handler torch's DataLoader installs for its workers (and
    never removes) is taken away.
    Left in place, a later test's subprocess exiting ran it, and the test process crashed
    with a segmentation fault (test_loader's worker test, then any subprocess call)."""
    yield
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
