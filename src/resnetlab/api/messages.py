"""Errors in Python's words: a message the command line words with its flags (``--epochs``)
names the Python argument instead (``epochs=``)."""

from __future__ import annotations

import os
import re
from typing import Any

from ..core.errors import ConfigError, ImageDecodeError, ResnetlabError

# ------------------------------------------------------------------ errors in Python's words

_UNSET = object()
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?: ([A-Z][A-Z_]*)\b)?")
_COMMAND = re.compile(r"resnetlab [a-z]+ [^;\n]*")  # a command to paste: left as it is


def python_message(message: str, given: dict[str, Any], known: set[str]) -> str:
    """``message`` (written for the command line) in the words of a Python call: each
    ``--flag`` of a setting becomes the argument's name, ``--flag VALUE`` becomes
    ``name=VALUE``, and a message that starts with a flag the caller gave opens with it and
    its value (``--epochs must be at least 1, got -1`` -> ``epochs=-1: must be at least 1``).
    Commands quoted for the shell (``resnetlab train --resume ...``) are left as they are."""

    def words(text: str, first: bool) -> str:
        out, pos = [], 0
        for m in _FLAG.finditer(text):
            name = m.group(1).replace("-", "_")
            if name not in known:
                continue
            out.append(text[pos : m.start()])
            value = given.get(name, _UNSET)
            said = f" {value}"
            after = text[m.end() + len(said) : m.end() + len(said) + 1]
            if value is not _UNSET and text[m.end() :].startswith(said) and not after.isalnum():
                out.append(f"{name}={value!r}")  # "--mode finetune" -> "mode='finetune'"
                pos = m.end() + len(said)
                continue
            if first and m.start() == 0 and value is not _UNSET:
                out.append(f"{name}={value!r}:")
                rest = text[m.end() :]
                # the value said again ("..., got -1") is said once
                for shown in {str(value), repr(value)}:
                    got = re.match(rf"(.*?), got {re.escape(shown)}(?=$|\s*[;.(,])", rest)
                    if got:
                        text = text[: m.end()] + got.group(1) + rest[got.end() :]
                        break
            elif m.group(2):
                out.append(f"{name}={m.group(2)}")
            else:
                out.append(name)
            pos = m.end()
        out.append(text[pos:])
        return "".join(out)

    if message.startswith("DATA "):
        message = "data=" + message[len("DATA ") :]
    pieces, pos = [], 0
    for m in _COMMAND.finditer(message):
        pieces.append(words(message[pos : m.start()], pos == 0))
        pieces.append(m.group(0))
        pos = m.end()
    pieces.append(words(message[pos:], pos == 0))
    return "".join(pieces)


class _PythonNames:
    """A ``with`` block whose ``ResnetlabError`` says Python arguments instead of flags."""

    def __init__(self, given: dict[str, Any]) -> None:
        from ..train.config import TrainConfig

        self.given = given
        self.known = {f for f in TrainConfig.__dataclass_fields__} | {"config", "resume"}

    def __enter__(self) -> _PythonNames:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, ResnetlabError) or not exc.args:
            return False
        if not isinstance(exc.args[0], str) or isinstance(exc, ImageDecodeError):
            return False
        text = python_message(exc.args[0], self.given, self.known)
        if text != exc.args[0]:
            exc.args = (text, *exc.args[1:])
        return False


# ------------------------------------------------------------------------------ training


def _data_string(data: Any) -> str:
    """The ``DATA`` string for what ``fit(data=...)`` was given."""
    from torch.utils.data import Dataset

    from ..data import memory

    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if isinstance(data, Dataset):
        images, labels, classes = memory.from_dataset(data)
        return memory.register(images, labels, classes)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        images, labels = data[0], data[1]
        classes = list(data[2]) if len(data) == 3 else None
        return memory.register(images, labels, classes)
    raise ConfigError(
        f"data={type(data).__name__}: give a DATA string (digits, a folder, mnist:DIR, "
        "cifar10:DIR, csv:FILE, ...), a folder path, an (images, labels) pair (uint8 arrays or "
        "tensors or PIL images; labels as ints or names), or a torch Dataset of (image, label)"
    )
