"""One error family: the user's mistakes print one line; a bug in resnetlab keeps its traceback."""

import errno
import urllib.error
import urllib.request

import pytest

from resnetlab.artifacts.weights import WeightsError
from resnetlab.cli import commands as cli
from resnetlab.core import errors
from resnetlab.core import files as io
from resnetlab.data import DataError, ImageDecodeError


def test_a_bug_inside_a_command_keeps_its_traceback(monkeypatch):
    def broken(args):
        return {}["missing"]  # a genuine bug: KeyError

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    with pytest.raises(KeyError):
        cli.main(["models"])


def test_a_plain_value_error_from_our_code_is_not_swallowed(monkeypatch):
    def broken(args):
        raise ValueError("internal: shapes disagree")  # not a ResnetlabError: a bug

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    with pytest.raises(ValueError, match="internal"):
        cli.main(["models"])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["models", "nothing*"], "no model matches"),
        (["summary", "resnet19"], "unknown model 'resnet19'"),
        (["train", "--lr", "-1"], "--lr must be positive"),
        (["train", "--data", "/no/such/folder"], "not a folder"),
        (["predict", "/no/such/run", "x.png"], "no such run folder"),
        (["train", "--model-kwargs", "shortcut=C"], "shortcut='C'"),
        (["train", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ],
)
def test_user_errors_are_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_every_user_error_is_one_family_and_keeps_its_builtin_base():
    for cls, base in [
        (DataError, ValueError),
        (WeightsError, ValueError),
        (errors.ConfigError, ValueError),
        (errors.FileConflictError, FileExistsError),
        (errors.MissingFileError, FileNotFoundError),
        (errors.WriteError, OSError),
    ]:
        assert issubclass(cls, errors.ResnetlabError) and issubclass(cls, base)
    assert ImageDecodeError("a.png", "too big", kind="too_large").kind == "too_large"
    assert ImageDecodeError("a.png", "corrupt").kind == "unreadable"


def _refuse_writes(monkeypatch, code):
    def mkstemp(*args, **kwargs):
        raise OSError(code, "refused by the test")

    monkeypatch.setattr(io.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize(
    "code, cause",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
    ],
)
def test_a_refused_write_names_the_file_and_the_cause(code, cause, tmp_path, monkeypatch):
    _refuse_writes(monkeypatch, code)
    with pytest.raises(errors.WriteError) as caught:
        io.atomic_write_text(tmp_path / "a.json", "{}")
    assert str(caught.value) == f"cannot write {tmp_path / 'a.json'}: {cause}"
    assert caught.value.errno == code and not list(tmp_path.iterdir())


def test_other_write_failures_keep_their_traceback(tmp_path, monkeypatch):
    _refuse_writes(monkeypatch, errno.EIO)  # the disk itself failing: not the user's to fix
    with pytest.raises(OSError) as caught:
        io.atomic_write_text(tmp_path / "a.json", "{}")
    assert not isinstance(caught.value, errors.ResnetlabError)


@pytest.mark.parametrize(
    "kind, url",
    [
        ("mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        ("cifar10", "cifar-10-python.tar.gz"),
    ],
)
def test_download_offline_is_one_line(kind, url, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert cli.main(["stats", f"{kind}:{tmp_path / 'd'}", "--download"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--download: cannot fetch" in err and url in err and "Name or service not known" in err
    assert f"place {'them' if kind == 'mnist' else 'it'} in {tmp_path / 'd'}" in err
