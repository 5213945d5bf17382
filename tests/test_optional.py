"""A missing optional package is one line naming the extra to install, from every command
that needs one; an ImportError from inside an installed package keeps its traceback."""

import sys

import pytest
from PIL import Image

from resnetlab.cli.commands import main
from resnetlab.core.optional import MissingDependencyError, require


def test_require_names_the_extra_and_keeps_other_import_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingDependencyError) as e:
        require("optuna", "resnetlab tune")
    assert str(e.value) == (
        "resnetlab tune needs the optuna package: pip install 'resnetlab[tune]' "
        "(or pip install optuna)"
    )
    assert isinstance(e.value, ValueError)  # a ConfigError: the user's to fix


@pytest.mark.parametrize(
    "module, argv, extra",
    [
        ("fastapi", ["serve", "{run}"], "serve"),
        ("onnx", ["export", "{run}", "--out", "{tmp}/m.onnx"], "export"),
        ("captum", ["explain", "{run}", "{tmp}/a.png", "--out", "{tmp}/cam"], "explain"),
        ("optuna", ["tune", "--data", "digits", "--trials", "1", "--out", "{tmp}/t"], "tune"),
    ],
)
def test_a_command_without_its_package_is_one_line(
    module, argv, extra, trained_run, tmp_path, capsys, monkeypatch
):
    Image.new("RGB", (8, 8), (40, 90, 200)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, module, None)
    for sub in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, sub, None)
    argv = [a.format(run=trained_run, tmp=tmp_path) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"pip install 'resnetlab[{extra}]'" in err


def test_explain_without_captum_is_the_servers_fault_not_the_clients(trained_run, monkeypatch):
    import io

    from fastapi.testclient import TestClient

    from resnetlab.inference.predict import Predictor
    from resnetlab.serve.app import create_app

    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 90, 200)).save(buf, format="PNG")
    with TestClient(
        create_app(Predictor(trained_run, backend="torch", precision="fp32"))
    ) as client:
        r = client.post("/explain", content=buf.getvalue(), headers={"content-type": "image/png"})
    assert r.status_code == 501, r.text
    assert "resnetlab[explain]" in r.json()["error"]
