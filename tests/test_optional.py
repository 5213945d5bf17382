"""The one guard for optional packages: a missing one is a line naming the extra to install;
an ImportError from inside an installed package keeps its traceback."""

import sys
from pathlib import Path

import pytest

from resnetlab.core.errors import ConfigError
from resnetlab.core.optional import EXTRAS, MissingDependencyError, require


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ModuleNotFoundError
    with pytest.raises(MissingDependencyError) as exc:
        require("onnx", "ONNX export")
    assert str(exc.value) == (
        "ONNX export needs the onnx package: pip install 'resnetlab[export]' (or pip install onnx)"
    )
    assert isinstance(exc.value, ConfigError) and "\n" not in str(exc.value)


def test_a_submodule_of_a_missing_package_names_its_pip_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    with pytest.raises(
        MissingDependencyError, match=r"protobuf package: pip install 'resnetlab\[convert\]'"
    ):
        require("google.protobuf", "Keras .h5 conversion")


def test_an_import_error_inside_an_installed_package_keeps_its_traceback(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import some_module_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as exc:
        require("brokenpkg", "a feature")
    assert not isinstance(exc.value, MissingDependencyError)


def test_every_extra_named_exists_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)
