"""Progress of a long loop, wherever its output goes: a bar on a terminal or in a notebook,
plain lines in logs.

On a terminal (stderr is a tty) a tqdm bar that moves from the first item. In a Jupyter kernel
(notebook, JupyterLab, VS Code, Colab) ``tqdm.auto``'s bar: a widget where ipywidgets is
installed, else tqdm's text bar, which the notebook redraws in place. Anywhere else (a log
file, CI, ``nohup``, a pipe, ``!resnetlab train`` in a notebook cell) a bar would be one
endless line of carriage returns, so a plain line is printed every
``RESNETLAB_PROGRESS_SECONDS`` seconds (30 by default) with the count, the rate and the time
left. ``Meter`` is used by training, decoding a data set, ``stats``, ``predict`` and the
Python API's ``Run.predict`` and ``Run.evaluate``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

PROGRESS_ENV = "RESNETLAB_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0
# A bar is redrawn at most this often when its caller asks whether an update is due (each
# update of the training bar costs a host sync on CUDA).
BAR_SECONDS = 0.5


def line_seconds() -> float:
    """Seconds between plain progress lines: ``$RESNETLAB_PROGRESS_SECONDS`` (0 prints one at
    every update), else 30; a value that is not a number is ignored."""
    text = os.environ.get(PROGRESS_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS
    return value if value >= 0 else DEFAULT_SECONDS


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def in_notebook() -> bool:
    """Whether this is a Jupyter kernel's process, by the test ``tqdm.auto`` makes (ipykernel's
    shell imported; not a Qt console or Spyder, whose consoles draw text bars), so a bar is
    shown exactly where ``tqdm.auto`` can draw one."""
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    if any(k == "QT_API" or k.startswith("SPYDER") for k in os.environ):
        return False
    try:
        shell = sys.modules["IPython"].get_ipython()
    except Exception:  # IPython not imported after all, or no shell
        return False
    name = type(shell).__name__.lower()
    return shell is not None and "qt" not in name and "spyder" not in name


class Meter:
    """``total`` items of a loop: ``update(n)`` or ``update_to(done)`` as they complete,
    ``close()`` at the end. ``stats`` given to an update (``loss="1.23"``) are shown with it.

    ``bar``: False keeps a terminal to plain lines too (when the loop's own output goes to
    the same terminal, as ``predict``'s rows do). In a Jupyter kernel, progress written to
    its own stdout or stderr is ``tqdm.auto``'s bar (a widget); a stream of the caller's
    (a log file) keeps its plain lines there too."""

    def __init__(
        self,
        desc: str,
        total: int,
        unit: str = "images",
        stream=None,
        enabled: bool = True,
        initial: int = 0,
        bar: bool = True,
        every: float | None = None,
    ) -> None:
        self.desc, self.total, self.unit, self.enabled = desc, int(total), unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.notebook = (
            enabled and bar and self.stream in (sys.stdout, sys.stderr) and in_notebook()
        )
        self.tty = self.notebook or (enabled and bar and is_terminal(self.stream))
        self.every = line_seconds() if every is None else every
        self.initial = self.done = int(initial)
        self.started = self.last = time.monotonic()
        self.bar = None
        if self.tty:
            if self.notebook:  # a widget (ipywidgets), else a text bar drawn in place
                with warnings.catch_warnings():
                    # Without ipywidgets tqdm says "IProgress not found. Please update jupyter
                    # and ipywidgets": the text bar it falls back to works; nothing to update.
                    warnings.filterwarnings("ignore", message="IProgress not found")
                    from tqdm.auto import tqdm
            else:
                from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=desc,
                unit=unit[:-1] if unit.endswith("s") else unit,
                leave=False,
                dynamic_ncols=True,
                file=self.stream,
                mininterval=BAR_SECONDS,
            )

    def due(self) -> bool:
        """Whether an update now would show: a bar not moved yet or not for ``BAR_SECONDS``,
        a line not printed for ``every`` seconds. For callers whose update costs something."""
        if not self.enabled:
            return False
        if self.tty:
            return self.done == self.initial or time.monotonic() - self.last >= BAR_SECONDS
        return time.monotonic() - self.last >= self.every

    def update(self, n: int = 1, **stats) -> None:
        self.update_to(self.done + n, **stats)

    def update_to(self, done: int, **stats) -> None:
        if not self.enabled:
            return
        first, moved, self.done = self.done == self.initial, done - self.done, int(done)
        if self.bar is not None:
            if stats:
                self.bar.set_postfix(stats, refresh=False)
            self.bar.update(moved)
            if first:  # drawn now, not after tqdm's own interval: the bar moves at once
                self.bar.refresh()
            self.last = time.monotonic()
        elif time.monotonic() - self.last >= self.every and self.done < self.total:
            print(self.text(**stats), file=self.stream, flush=True)
            self.last = time.monotonic()

    def text(self, **stats) -> str:
        """``DESC  120/1,000 steps (12%)  loss 1.23  45.1 images/s  ETA 3m12s``."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.initial) / elapsed
        parts = [
            f"{self.desc}  {self.done:,}/{self.total:,} {self.unit}"
            + (f" ({self.done / self.total:.0%})" if self.total else "")
        ]
        parts += [f"{k.replace('_', '/')} {v}" for k, v in stats.items()]
        if "img_s" not in stats:
            parts.append(f"{rate:,.1f} {self.unit}/s")
        if rate > 0 and self.total > self.done:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        return "  ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
