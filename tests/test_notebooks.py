"""The notebooks in examples/, one per seed job, run top to bottom in a real Jupyter kernel
(nbclient + ipykernel) as a user runs them: every cell without an error, the figures drawn
(PNG outputs), and the final accuracy line printed."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
# About two minutes together on 2 shared cores: `make test` runs them, `make test-fast` not.
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
FINAL = re.compile(r"final test accuracy: (\d\.\d{3})")
# What each notebook draws at least: (PNG figures, HTML displays with an image in them).
EXPECTED = {
    "transfer_learning.ipynb": (2, 2),  # curves, confusion matrix; a run, predictions
    "herbal_mindspore.ipynb": (1, 2),  # confusion matrix; the run, predictions
    "mnist_residual.ipynb": (1, 1),  # residual vs plain losses; predictions
    "cifar_shortcuts.ipynb": (2, 0),  # curves, the degradation figure
    "optuna_search.ipynb": (2, 0),  # the study's history, the best run's curves
}


def run_notebook(name: str, folder: Path, timeout: int = 300):
    """``examples/NAME`` executed in a fresh kernel with ``folder`` as its working folder."""
    book = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(
        book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    return book


def outputs(book) -> tuple[list[bytes], list[str], str]:
    """(PNG images, HTML displays, all text) of an executed notebook."""
    pngs, pages, text = [], [], []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            data = out.get("data", {})
            if "image/png" in data:
                pngs.append(base64.b64decode(data["image/png"]))
            if "text/html" in data:
                pages.append(data["text/html"])
            if "text/plain" in data:
                text.append(data["text/plain"])
    return pngs, pages, "".join(text)


def test_there_is_a_notebook_for_every_seed_job():
    assert set(NOTEBOOKS) == set(EXPECTED)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebook_runs_in_a_kernel_and_draws_its_figures(name, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # The kernel is a process of its own: one thread per test worker, as the workers have.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    monkeypatch.setenv("OMP_NUM_THREADS", str(max(1, 2 // workers)))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = run_notebook(name, tmp_path)
    pngs, pages, text = outputs(book)
    figures, displays = EXPECTED[name]
    assert len(pngs) >= figures, (name, len(pngs))
    assert all(p.startswith(b"\x89PNG") and len(p) > 2000 for p in pngs), name
    assert sum("<img" in p for p in pages) >= displays, (name, len(pages))
    found = FINAL.findall(text)
    assert found and 0.0 <= float(found[-1]) <= 1.0, (name, text[-2000:])
