import os
import signal

import pytest
import torch

# make test runs two pytest workers (pytest-xdist, one per core): each takes one intra-op
# thread so the two never oversubscribe the cores. A single process (pytest -n 0, a debugger)
# takes up to two.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def pytest_collection_modifyitems(config, items):
    """The journeys and the tests that drive Chromium are marked ``slow``: ``make test-fast``
    leaves them out, ``make test`` runs everything."""
    for item in items:
        path = str(item.path)
        if "/journeys/" in path or "chrome_driver" in _source(item):
            item.add_marker(pytest.mark.slow)


def _source(item) -> str:
    import inspect

    try:
        return inspect.getsource(item.function)
    except (OSError, TypeError, AttributeError):
        return ""


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished run (digits; a resnet20 of widths 4-8-8 trained one epoch, with its test
    score, calibration and both checkpoints), trained once per session for the tests that only
    read it: copy it before changing anything in it."""
    from resnetlab.train import Trainer, resolve_config

    root = tmp_path_factory.mktemp("trained")
    cfg = resolve_config(
        dict(
            model="resnet20",
            model_kwargs={"widths": [4, 8, 8]},
            epochs=1,
            out=str(root),
            name="digits",
            num_workers=0,
            precise_bn=False,
        )
    )
    Trainer(cfg, verbose=False).fit()
    return root / "digits"


@pytest.fixture(scope="module")
def auto_backend_measures_torch():
    """``--backend auto`` measures PyTorch alone (fp32, and bf16 where the CPU has it): for
    modules whose reports run evaluate on a fresh run, where auto would export to ONNX and
    compile OpenVINO for seconds without changing what they check (commands such as report
    and train's tracker step have no --backend flag to pass). The choice is still made,
    cached and announced as usual; test_backend_choice tests the measurement itself."""
    from resnetlab.inference import choice

    every = choice.candidates

    def torch_only(device, precision="auto"):
        return [c for c in every(device, precision) if c[0] == "torch"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(choice, "candidates", torch_only)
        yield


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """``read_only(folder)``: ``folder`` seen through a read-only bind mount, as a Docker or
    Kaggle model folder is (chmod would not do: root writes through it). Skips the test where
    mounting is refused. The user's cache folder is this test's own."""
    import shutil
    import subprocess
    import tempfile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    mounted = []

    def mount(folder):
        target = tmp_path / "read-only" / folder.name
        target.mkdir(parents=True)
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        p = subprocess.run(
            ["mount", "--bind", str(folder), str(target)], capture_output=True, text=True
        )
        if p.returncode == 0:
            mounted.append(target)
            p = subprocess.run(
                ["mount", "-o", "remount,bind,ro", str(target)], capture_output=True, text=True
            )
        if p.returncode != 0:
            pytest.skip(f"a read-only bind mount is refused here: {p.stderr.strip()}")
        try:  # it must refuse a new file
            tempfile.TemporaryFile(dir=target).close()
        except OSError:
            return target
        pytest.skip("the bind mount stayed writable here")

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], capture_output=True)
