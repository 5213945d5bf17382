"""Problems of a data set that stop a run (an empty class folder, a class without a readable
training image, a class folder only a held-out split has), said all at once: a run stops with
one error naming every one of them; the data set doctor (``resnetlab stats``) collects them
instead and lists them with the rest of its report."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from ..core.errors import DataError


class Problems(list):
    """The messages collected, each fault once (``keys``: the faults already said)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: set = set()


_SINK: contextvars.ContextVar[Problems | None] = contextvars.ContextVar("problems", default=None)


@contextlib.contextmanager
def collect_problems() -> Iterator[Problems]:
    """Within, ``report_problems`` adds to the list this yields instead of raising."""
    found = Problems()
    token = _SINK.set(found)
    try:
        yield found
    finally:
        _SINK.reset(token)


def report_problems(problems: list[tuple[object, str]]) -> None:
    """``problems``: (key, message) pairs, the key naming the fault, so that one fault is said
    once (an empty class folder, and the class without a training image it leaves). Raises
    one ``DataError`` naming them all, or, within ``collect_problems``, adds them to its
    list."""
    if not problems:
        return
    sink = _SINK.get()
    if sink is None:
        messages = list(dict.fromkeys(m for _, m in problems))
        more = f"{len(messages)} problems: " if len(messages) > 1 else ""
        raise DataError(more + "; ".join(messages))
    for key, message in problems:
        if key not in sink.keys:
            sink.keys.add(key)
            sink.append(message)
