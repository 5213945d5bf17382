"""Atomic file writes: a reader (or a crash) never sees half a file. A write that the disk,
the permissions or a read-only mount refuse is a one-line ``WriteError``; a folder lock keeps
two processes out of one folder."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import ResnetlabError, WriteError

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are used unlocked
    fcntl = None

log = logging.getLogger(__name__)

# The errors a user fixes (free space, grant access, choose another folder), and how they read.
WRITE_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files get the usual permissions (0644 with the common umask), not mkstemp's private 0600.
_FILE_MODE = 0o666 & ~_umask()


def write_error(exc: BaseException, path: str | os.PathLike, what: str = "write"):
    """``exc`` as a ``WriteError`` naming ``path`` when it is a full disk or quota, a refused
    permission or a read-only file system; None for anything else (a bug keeps its traceback)."""
    if isinstance(exc, ResnetlabError) or not isinstance(exc, OSError):
        return None
    cause = WRITE_CAUSES.get(exc.errno)
    if cause is None:
        return None
    return WriteError(f"cannot {what} {os.fspath(path)}: {cause}", exc.errno, os.fspath(path))


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "write") -> Iterator[None]:
    """Around a write of ``path``: the user's write errors (see ``WRITE_CAUSES``) become a
    ``WriteError`` that names it; every other error passes unchanged."""
    try:
        yield
    except OSError as exc:
        err = write_error(exc, path, what)
        if err is None:
            raise
        raise err from None


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p``; a folder that cannot be created is a ``WriteError`` naming it."""
    path = Path(path)
    with writing(path, "create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file another library wrote (``onnx.save``, ``torch.jit.save``) to the disk
    before it is renamed into place, as every atomic write here does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then ``os.replace`` over ``path``.

    A process killed at any moment leaves either the old file or the new one, never a torn one;
    so does a full disk (the temp file is removed; a ``WriteError`` names ``path``).
    """
    path = Path(path)
    make_dirs(path.parent)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class FolderLock:
    """One process's claim on a folder: ``fcntl.flock`` on a lock file in it, held until
    ``release``. The system drops the lock when its process ends, however it ends (SIGKILL
    too), so a file left by a dead process never blocks anyone; ``release`` removes it. A file
    system without flock (some network mounts) leaves the folder unlocked, with a warning."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, path: str | os.PathLike) -> FolderLock | None:
        """Lock ``path`` (created if need be); None when another process holds it."""
        path = Path(path)
        if fcntl is None:
            return cls(path, None)
        while True:
            with writing(path):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError as exc:  # ENOLCK, ENOSYS, EINVAL: no flock on this file system
                log.warning(
                    "%s: cannot be locked (%s); not protected from a second run", path, exc.strerror
                )
                return cls(path, fd)
            # The process before us may have removed the file between our open and our lock:
            # a lock on that removed file claims nothing, so take the one now in its place.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        with contextlib.suppress(OSError):  # who holds it, for the one refused (a full disk: no)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    @staticmethod
    def holder(path: str | os.PathLike) -> int | None:
        """The process id the lock file names, if it can be read."""
        try:
            return int(Path(path).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Remove the lock file and drop the lock (removed first, while still held, so that
        nobody locks the old file after us); releasing twice is harmless."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):  # for the copies forked loader workers hold, too
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
