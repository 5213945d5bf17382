import os

import pytest
import torch

# Two cores: one intra-op thread per test process keeps timings stable and avoids
# oversubscription when a test starts worker processes of its own.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
