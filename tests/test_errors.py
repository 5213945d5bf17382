"""One error family: the user's mistakes print one line; a bug in resnetlab keeps its traceback."""

import pytest

from resnetlab import cli, errors
from resnetlab.data import DataError, ImageDecodeError
from resnetlab.weights import WeightsError


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
    ],
)
def test_user_errors_are_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_every_user_error_is_one_family_and_keeps_its_builtin_base():
    for cls, base in [(DataError, ValueError), (WeightsError, ValueError),
                      (errors.ConfigError, ValueError), (errors.FileConflictError, FileExistsError),
                      (errors.MissingFileError, FileNotFoundError)]:  # fmt: skip
        assert issubclass(cls, errors.ResnetlabError) and issubclass(cls, base)
    assert ImageDecodeError("a.png", "too big", kind="too_large").kind == "too_large"
    assert ImageDecodeError("a.png", "corrupt").kind == "unreadable"
