"""A run's folder, claimed for one training at a time: the default name made unique by an
exclusive create, the lock held until the run ends, and a refused write turned into one line
that says how to continue."""

from __future__ import annotations

import errno
import itertools
import re
from datetime import datetime
from pathlib import Path

from ..artifacts.run import RunDir
from ..core.errors import FileConflictError, WriteError
from ..core.files import WRITE_CAUSES, FolderLock, atomic_write_text, writing
from ..core.fmt import shell_command
from .config import TrainConfig, dump_yaml
from .loggers import MetricsCSV, TensorBoard


def _run_name(cfg: TrainConfig) -> str:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data.split(":")[-1]).name or cfg.data)
    return f"{cfg.model}-{tag.strip('-') or 'data'}-{datetime.now():%Y%m%d-%H%M%S}"


class RunFolderClaim:
    """The run folder of a ``Trainer``: claimed, locked, prepared and let go."""

    def _claim_run_dir(self) -> Path:
        """The run folder, claimed before anything is written in it: a folder of the default
        name is created exclusively (with -2, -3, ... when a run started in the same second
        has it), a named one is locked (and refused by ``_prepare_run_dir`` when it holds a
        run). A resumed run's folder was locked before its checkpoint was read."""
        cfg = self.cfg
        out = Path(cfg.out)
        if self.resume_state is not None:
            return out / cfg.name
        with writing(out, "create the folder"):
            out.mkdir(parents=True, exist_ok=True)
        if cfg.name:
            d = out / cfg.name
            try:
                with writing(d, "create the folder"):
                    d.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise FileConflictError(
                    f"{d} is a file, not a run folder; pick another --name"
                ) from None
            self._lock_run(d)
            return d
        base = _run_name(cfg)
        for n in itertools.count(1):
            d = out / (base if n == 1 else f"{base}-{n}")
            try:
                with writing(d, "create the folder"):
                    d.mkdir()  # exclusive: of two runs started together, one gets it
            except FileExistsError:
                continue
            self._lock_run(d)
            return d
        raise AssertionError("unreachable")

    def _lock_run(self, d: Path, resuming: bool = False) -> None:
        """Hold ``d`` for this run; another training holding it is refused in one line."""
        lock_file = RunDir(d).lock
        try:
            lock = FolderLock.acquire(lock_file)
        except WriteError as exc:
            if not resuming or exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            err = WriteError(
                f"cannot write in {d}: {WRITE_CAUSES[exc.errno]}; a resumed run writes its "
                "checkpoints there: make it writable, or copy the run somewhere writable and "
                "resume the copy",
                exc.errno,
                exc.filename,
            )
            err.advised = True
            raise err from None
        if lock is None:
            pid = FolderLock.holder(lock_file)
            then = (
                "resume it once that one has stopped"
                if resuming
                else ("wait for it to end, or pick another --name")
            )
            raise FileConflictError(
                f"{d} is in use by another training{f' (process {pid})' if pid else ''}; {then}"
            )
        self._lock = lock

    def close(self) -> None:
        """Let go of the run folder (``fit`` does when it ends); the trainer stays usable."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _write_failed(self, exc: WriteError) -> WriteError:
        """``exc`` (a full disk, no permission, a read-only mount) with what to do next: the
        last checkpoint, which atomic writes leave intact, and the command that continues."""
        if getattr(exc, "advised", False):
            return exc
        run = getattr(self, "run", None)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if run is None:  # the run folder itself could not be made
            fix = "free some space" if full else "give --out a folder you can write to"
            return WriteError(f"{exc}; {fix}", exc.errno, exc.filename)
        fix = "free some space" if full else f"make {run.path} writable"
        if run.last_checkpoint.is_file():
            when = f" ({self._saved})" if self._saved else ""
            msg = (
                f"{exc}; {run.LAST_CHECKPOINT}{when} is intact: {fix}, then continue with: "
                + shell_command("resnetlab", "train", "--resume", run.path)
            )
        else:
            msg = f"{exc}; {fix}, then run the same command again (the folder is reused)"
        return WriteError(msg, exc.errno, exc.filename)

    def _prepare_run_dir(self) -> None:
        run, d = self.run, self.run_dir
        if self.resume_state is None and not run.only_startup_files():
            raise FileConflictError(
                f"{d} already holds files; resume it with "
                + shell_command("resnetlab", "train", "--resume", d)
                + ", or pick another --name"
            )
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, dump_yaml(self.cfg))
        self.metrics_csv = MetricsCSV(run.metrics)
        self.tb = TensorBoard(d) if self.cfg.tensorboard else None
