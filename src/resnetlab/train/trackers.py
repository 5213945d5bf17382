"""How a run ended (``status.json``), and the experiment trackers a run reports to.

``status.json`` says whether a run finished, was stopped on purpose (Ctrl-C, SIGTERM,
``--max-steps``: resumable) or failed (an error: its message is kept), so ``resnetlab runs``
tells them apart; a run still going holds its folder's lock, and one killed outright (SIGKILL,
out of memory) leaves the lock file behind without a holder.
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime, timezone

from ..io import atomic_write_text
from ..run import RunDir

log = logging.getLogger(__name__)

STATES = ("finished", "stopped", "failed", "running")


def end_state(exc: BaseException | None) -> tuple[str, str | None]:
    """``(state, reason)`` for a run whose ``fit`` ended with ``exc`` (None: it finished)."""
    if exc is None:
        return "finished", None
    # The engine's RunStopped, by name: the engine imports this module, not the other way.
    if any(c.__name__ == "RunStopped" for c in type(exc).__mro__):
        return "stopped", str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "stopped", "interrupted (Ctrl-C twice: stopped at once)"
    if isinstance(exc, SystemExit):
        return "stopped", f"stopped at once (exit status {exc.code})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return "failed", f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_end(run: RunDir, exc: BaseException | None, epoch: int | None = None) -> dict:
    """Write ``status.json`` for a run whose training ended with ``exc`` (None: finished).
    A folder that cannot be written keeps what it had: the status is a note, never a new
    error on top of the one that ended the run."""
    state, reason = end_state(exc)
    status = {
        "state": state,
        "reason": reason,
        "epochs_completed": epoch,
        "ended": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
    }
    try:
        atomic_write_text(run.status, json.dumps(status, indent=2, ensure_ascii=False) + "\n")
    except OSError as err:  # a full disk, a read-only folder: the run's own error says so
        log.debug("%s: status not written (%s)", run.status, err)
    return status


def records_outcome(fit):
    """Decorates ``Trainer.fit``: however it ends (returns, stops, raises), the main process
    writes ``status.json``, then the exception, if any, goes on as it was."""

    @functools.wraps(fit)
    def wrapper(trainer, *args, **kwargs):
        try:
            result = fit(trainer, *args, **kwargs)
        except BaseException as exc:
            _ended(trainer, exc)
            raise
        _ended(trainer, None)
        return result

    return wrapper


def _ended(trainer, exc: BaseException | None) -> None:
    run = getattr(trainer, "run", None)
    if run is None or not trainer.dist.is_main:
        return
    record_end(run, exc, getattr(trainer, "epoch", None))
