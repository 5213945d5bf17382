"""How a run stops on purpose: --max-steps, the first Ctrl-C or a SIGTERM (what a preempted
job gets) end it after the current step with a resumable checkpoint; under DDP every rank
agrees on the step."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from . import distributed as D
from .tally import EpochTally

LOG_EVERY = 20  # steps between progress updates (each one is a host sync on CUDA)


class RunStopped(Exception):
    """Training stopped on purpose (--max-steps, Ctrl-C, SIGTERM) after a resumable
    checkpoint; ``signum``: the signal that stopped it (None: --max-steps)."""

    def __init__(self, message: str, run_dir: Path, signum: int | None = None) -> None:
        super().__init__(message)
        self.run_dir, self.signum = run_dir, signum

    @property
    def interrupted(self) -> bool:
        return self.signum is not None


class Stopping:
    """The stops of a ``Trainer``: signals caught, agreed on across ranks, a checkpoint first."""

    def _stop_if_asked(self, tally: EpochTally | None = None) -> None:
        """End the run here when --max-steps is reached or a stop was asked (Ctrl-C, SIGTERM).
        Mid-epoch (``tally`` given) a resumable checkpoint with the epoch's running sums is
        written first; at the end of an epoch its own checkpoint is already there. Under DDP
        the ranks agree on a signal every LOG_EVERY steps and at each epoch's end, and wait
        for rank 0's checkpoint before they stop, so each stops after the same step."""
        if not self.dist.enabled:
            self._stop_signal = self._signal
        elif tally is None or self.step_in_epoch % LOG_EVERY == 0:
            self._stop_signal = D.max_over_ranks(self._signal or 0, self.dist, self.device) or None
        reason = self._stop_reason()
        if reason is None:
            return
        if tally is not None:
            self._check_finite(tally)
            self._account(tally)
            self.save(self.run.last_checkpoint, self._all_sums(tally))
            self.progress.close()
        D.barrier(self.dist)
        raise RunStopped(reason, self.run_dir, self._stop_signal)

    def _stop_reason(self) -> str | None:
        if self._stop_signal is not None:
            how = (
                "interrupted"
                if self._stop_signal == signal.SIGINT
                else (f"stopped by {signal.Signals(self._stop_signal).name}")
            )
            return f"{how} at step {self.global_step} (epoch {self.epoch + 1}); checkpoint saved"
        if self.cfg.max_steps and self.global_step >= self.cfg.max_steps:
            return f"stopped after step {self.global_step} (--max-steps)"
        return None

    @contextlib.contextmanager
    def _signals_save(self) -> Iterator[None]:
        """The first Ctrl-C, or SIGTERM (what Docker, Kubernetes and Slurm send a preempted
        job), ends the run after its current step with a resumable checkpoint; a second one
        stops at once. Signals reach the main thread only: a run in another thread keeps
        Python's handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is not None:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + signum)
            self._signal = signum
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.progress.line(
                f"{name}: stopping after this step with a checkpoint ({name} again to stop at once)"
            )

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, handler) for s in signals}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, signal.SIG_DFL if h is None else h)
