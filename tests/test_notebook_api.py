"""The Python API in a real Jupyter kernel (nbclient + ipykernel), as a notebook user sees it:
Run.predict, Run.evaluate and fit(verbose=True) show tqdm.auto's bar (a widget with
ipywidgets, tqdm's text bar without), progress=False shows nothing, and every figure the API
returns shows once as a cell's value, never a second time at the end of the cell."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")
# A kernel, the run's evaluation and one tiny training: `make test` runs it, test-fast not.
pytestmark = pytest.mark.slow

WIDGET = "application/vnd.jupyter.widget-view+json"

SETUP = """\
import numpy as np
from sklearn.datasets import load_digits

import resnetlab

run = resnetlab.load({run!r})
X = np.uint8(load_digits().images[:40] * 255 / 16)
"""

CELLS = {
    "setup": None,  # SETUP, with the run's path
    "predict": "p = run.predict(X, batch_size=8)",
    "quiet": "p = run.predict(X, batch_size=8, progress=False)\n"
    "ev = run.evaluate(out='eval-quiet', progress=False)",
    "evaluate": "ev = run.evaluate(top_losses=2, out='eval')",
    "curves": "run.curves()",
    "confusion_matrix": 'ev.figures["confusion_matrix"]',
    "top_losses": 'ev.figures["top_losses"]',
    "confusion_figure": "ev.confusion_figure()",
    "explain": "run.explain(X[:3]).figure()",
    "fit": "fit = resnetlab.fit(model_kwargs={'widths': [4, 8, 8]}, epochs=1, batch_size=128,\n"
    "                    num_workers=0, precise_bn=False, out='runs', name='fit')",
    # the same kernel without ipywidgets: tqdm.auto falls back to its text bar
    "text bar": "import sys\n"
    "sys.modules['ipywidgets'] = None\n"
    "for name in [m for m in sys.modules if m.startswith('tqdm.')]:\n"
    "    del sys.modules[name]\n"
    "p = run.predict(X, batch_size=8)",
}


@pytest.fixture(scope="module")
def cells(trained_run, tmp_path_factory) -> dict[str, list]:
    """The outputs of each cell of CELLS, run in order in one fresh kernel."""
    import os

    folder = tmp_path_factory.mktemp("kernel")
    sources = {**CELLS, "setup": SETUP.format(run=str(trained_run))}
    book = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in sources.values()]
    )
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    with pytest.MonkeyPatch.context() as mp:  # the kernel's environment
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        mp.setenv("RESNETLAB_PROGRESS_SECONDS", "0")  # without a bar: a line per update
        mp.setenv("OMP_NUM_THREADS", str(max(1, 2 // workers)))  # one thread per worker
        mp.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        client = nbclient.NotebookClient(
            book,
            timeout=300,
            kernel_name="python3",
            allow_errors=True,  # each test reads its own cell's outputs (an error among them)
            resources={"metadata": {"path": str(folder)}},
        )
        client.execute()
    found = {name: cell.outputs for name, cell in zip(sources, book.cells)}
    assert _errors(found["setup"]) == []
    return found


def _errors(outputs) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]


def _widgets(outputs) -> list[str]:
    """The text of each tqdm widget displayed (its plain-text form: 'predict:   0%|...')."""
    return [o.data["text/plain"] for o in outputs if WIDGET in o.get("data", {})]


def _stderr(outputs) -> str:
    return "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")


def _pngs(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_predict_evaluate_and_fit_show_a_widget_bar_in_a_notebook(cells):
    for name in ("predict", "evaluate", "fit"):
        assert _errors(cells[name]) == [], name
    assert [w.split(":")[0] for w in _widgets(cells["predict"])] == ["predict"]
    assert "predict  " not in _stderr(cells["predict"])  # a bar, not plain lines
    assert [w.split(":")[0] for w in _widgets(cells["evaluate"])] == ["evaluate test"]
    epochs = _widgets(cells["fit"])
    assert epochs and all(w.startswith("epoch 1/1:") for w in epochs), epochs
    assert "epoch   1/1" in _stderr(cells["fit"])  # the epoch's own line, as on a terminal


def test_progress_false_shows_nothing(cells):
    assert cells["quiet"] == []


def test_without_ipywidgets_the_bar_is_tqdm_s_text_bar(cells):
    out = cells["text bar"]
    assert _errors(out) == []
    assert _widgets(out) == []
    text = _stderr(out)
    assert "\rpredict:" in text and "/40 [" in text, text
    assert "IProgress not found" not in text  # tqdm's advice to update Jupyter: not ours


@pytest.mark.parametrize(
    "name", ["curves", "confusion_matrix", "top_losses", "confusion_figure", "explain"]
)
def test_every_figure_the_api_returns_shows_once_as_the_cell_s_value(cells, name):
    out = cells[name]
    assert _errors(out) == []
    assert _pngs(out) == 1, [o.output_type for o in out]
    assert out[0].output_type == "execute_result"
