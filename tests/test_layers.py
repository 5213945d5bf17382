"""The package's imports run one way: each module imports only its own layer or lower ones,
nothing imports in a cycle, and every module imports on its own in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import resnetlab

PACKAGE = Path(resnetlab.__file__).parent

# Lowest first: packages, and a module of a package where it sits lower or higher than the
# rest of its package (the longest name that matches counts). A module may import from its own
# layer (without a cycle) and from any below.
LAYERS = [
    # the error family, atomic files, settings, device and runtime, formatting, figures,
    # progress, the optional-package guard; the logits loop, calibration, multi-label
    # measures and the one weights fingerprint; the task (single- or multi-label) that owns
    # how outputs are read, scored and recorded
    ("core", "metrics", "tasks"),
    # the package root exposes the model API; its notebook API (fit, load, Run) is api's,
    # imported on first use (``__getattr__``), so it is no import of this layer
    ("data", "models", "resnetlab"),
    # the run folder and model metadata, weights in and out, weight sources, converters, a
    # model's preprocessing written out; the MACs table reads a model and its weights
    ("artifacts", "models.summary"),
    # loading a trained model back (from a run, or its own ONNX/TorchScript export); training
    ("inference.loading", "inference.exported", "train"),
    # using a model: exports, one backend per runtime and the choice, prediction, TTA, the
    # hub folder and the OpenVINO IR; evaluation and Grad-CAM
    ("inference", "analysis.evaluate", "analysis.explain"),
    # the report, the server, the experiments, the data audit, the notebook API
    ("analysis", "serve", "experiments", "audit", "api"),
    ("cli", "__main__"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["resnetlab", *parts])] = path
    return out


def _lazy_nodes(tree: ast.Module) -> set[int]:
    """The import statements of the package root that load its names on first use (inside
    ``__getattr__``) or only for type checkers (``if TYPE_CHECKING:``)."""
    lazy = set()
    for node in tree.body:
        if (isinstance(node, ast.FunctionDef) and node.name == "__getattr__") or (
            isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        ):
            lazy.update(id(n) for n in ast.walk(node))
    return lazy


def _imports(name: str, path: Path) -> set[str]:
    """resnetlab modules that ``name`` imports, at the top or inside functions (the package
    root's lazy names excepted: see ``_lazy_nodes``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = _lazy_nodes(tree) if name == "resnetlab" else set()
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("resnetlab"):
                found.add(target)
                # ``from . import x`` may name a submodule
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("resnetlab"))
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def _layer(module: str) -> int:
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER:
            return LAYER[".".join(parts[:n])]
    return LAYER["resnetlab"]


def test_every_module_has_a_layer():
    for name in _modules():
        assert _layer(name) is not None, name


def test_imports_only_go_down_or_sideways():
    wrong = []
    for name, path in _modules().items():
        for target in _imports(name, path):
            if _layer(target) > _layer(name):
                wrong.append(f"{name} (layer {_layer(name)}) imports {target} ({_layer(target)})")
    assert wrong == []


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path) for name, path in modules.items()}
    # A package's __init__ re-exports its modules; that edge is not a cycle of its own.
    graph = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_each_module_imports_alone_in_a_fresh_interpreter():
    # One interpreter (torch imported once); before each module every resnetlab module is
    # forgotten, so each import starts from nothing, as in a fresh process.
    names = sorted(n for n in _modules() if n != "resnetlab.__main__")  # that one runs
    code = (
        "import importlib, sys, torch\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'resnetlab' or m.startswith('resnetlab.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.argv))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr


def test_the_package_root_loads_its_notebook_api_on_first_use():
    """``import resnetlab`` does not import the training or the notebook API (``--help``
    stays quick); ``resnetlab.fit`` and the other lazy names resolve to api's."""
    code = (
        "import sys, resnetlab\n"
        "heavy = [m for m in ('resnetlab.api', 'resnetlab.train', 'resnetlab.inference') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import resnetlab.api as api\n"
        "for name in resnetlab._LAZY:\n"
        "    assert getattr(resnetlab, name) is getattr(api, name), name\n"
        "    assert name in resnetlab.__all__ and name in dir(resnetlab), name\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_the_prediction_path_imports_nothing_from_training():
    """Using a trained model (predict, evaluate, export, serve, the command line's parser and
    ``resnetlab --help``) never loads the training package: they do not pay for the trainer's
    imports, and a change in training cannot break them."""
    code = (
        "import sys\n"
        "import resnetlab.inference.predict, resnetlab.analysis.evaluate\n"
        "import resnetlab.inference.export, resnetlab.inference.choice, resnetlab.serve.app\n"
        "import resnetlab.cli.parser\n"
        "print(sorted(m for m in sys.modules if m.startswith('resnetlab.train')))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_no_module_is_over_500_lines():
    """A module that grows past 500 lines is split by what it does (see docs/architecture.md)."""
    lines = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in _modules().items()}
    assert {n: count for n, count in lines.items() if count > 500} == {}
