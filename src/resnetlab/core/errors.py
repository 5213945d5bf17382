"""One family for the errors a user can fix: bad values, unusable files, stale exports.

The command line prints these as one line and the server maps their ``kind`` to an HTTP
status; anything else is a bug in resnetlab and keeps its traceback. Each class also derives
from the built-in exception a Python caller would expect (``ValueError`` for a bad value,
``FileExistsError`` for a folder that is taken), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import os


class ResnetlabError(Exception):
    """A problem the user can fix; the message names the file or value and what to do."""

    kind: str = "invalid"


class ConfigError(ResnetlabError, ValueError):
    """A setting, flag or argument value that cannot be used."""


class DataError(ResnetlabError, ValueError):
    """A data set that cannot be used as given; the message says which file and what to do."""

    kind = "data"


class ImageDecodeError(DataError):
    """An image that cannot be used; ``str()`` names the file and the reason.

    ``kind``: ``unreadable`` (corrupt, empty, not an image), ``unsupported`` (a format we do
    not decode, e.g. EPS/PDF) or ``too_large`` (over the pixel limit: a decompression bomb)."""

    def __init__(
        self, path: str | os.PathLike | None, reason: str, kind: str = "unreadable"
    ) -> None:
        self.path = str(path) if path is not None else "<bytes>"
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")


class WeightsError(ResnetlabError, ValueError):
    """A weights or checkpoint file that cannot be used (missing, damaged, unsafe, mismatched)."""

    kind = "weights"


class ExportError(ResnetlabError, RuntimeError):
    """An export that cannot be made or verified."""

    kind = "export"


class StaleExportError(ExportError, ValueError):
    """An exported file made from other weights than the run holds now."""


class FileConflictError(ResnetlabError, FileExistsError):
    """A file or folder that is taken: resnetlab never overwrites what it did not write."""

    kind = "exists"


class MissingFileError(ResnetlabError, FileNotFoundError):
    """A file or folder the user named that does not exist or is not what was expected."""

    kind = "missing"


class TrainingError(ResnetlabError, RuntimeError):
    """A run that cannot go on (e.g. a non-finite loss); the message says what to change."""

    kind = "training"


class WriteError(ResnetlabError, OSError):
    """A file or folder that cannot be written: a full disk or quota, no permission, a
    read-only file system. ``str()`` names the path and the cause; ``errno`` is the system's.
    Other write failures (a bad descriptor, an I/O error) are not the user's to fix and keep
    their traceback."""

    kind = "write"

    def __init__(self, message: str, errno: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.filename = errno, path

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return str(self.args[0])
