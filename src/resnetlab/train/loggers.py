"""What the user sees while training: progress, metrics.csv, TensorBoard."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from ..core.files import atomic_write_text
from ..core.optional import require
from ..core.progress import Meter, is_terminal

METRIC_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "seconds",
]
# Written only by the runs that have them: multi-label runs (train_top1 is then the exact-match
# ratio, and val_top1/val_top5 stay empty).
OPTIONAL_COLUMNS = ["val_map", "val_exact_match"]


class MetricsCSV:
    """metrics.csv, rewritten atomically each epoch from the full history (resume-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        columns = METRIC_COLUMNS + [
            k for k in OPTIONAL_COLUMNS if any(r.get(k) is not None for r in rows)
        ]
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in columns})
        atomic_write_text(self.path, buf.getvalue())


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


class Progress:
    """What a run prints: its lines, and each epoch's progress (``progress.Meter``): a tqdm
    bar on a terminal that moves from the first step; in logs and CI a plain line every
    ``RESNETLAB_PROGRESS_SECONDS`` (30 s) with the step, the loss, images/s and the time left."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and is_terminal(self.stream)
        self.meter: Meter | None = None

    def start(self, epoch: int, epochs: int, total: int, initial: int = 0) -> None:
        if self.enabled:
            self.meter = Meter(
                f"epoch {epoch}/{epochs}", total, unit="steps", stream=self.stream, initial=initial
            )

    def due(self) -> bool:
        """Whether an update at this step would show (the first step, or enough time since
        the last): the caller pays a host sync for the loss only then."""
        return self.meter is not None and self.meter.due()

    def update_to(self, step: int, **stats) -> None:
        """At ``step`` (counted in the epoch) with ``stats`` such as ``loss="1.234"``."""
        if self.meter is not None:
            self.meter.update_to(step, **stats)

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()
            self.meter = None

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


class TensorBoard:
    def __init__(self, folder: Path) -> None:
        require("tensorboard", "--tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, row: dict) -> None:
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
