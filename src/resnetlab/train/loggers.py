"""What the user sees while training: progress, metrics.csv, TensorBoard."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from ..errors import ConfigError
from ..io import atomic_write_text

METRIC_COLUMNS = [
    "epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "seconds",
]  # fmt: skip
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
    """tqdm bar on a terminal; plain periodic lines in logs and CI."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None

    def start(self, epoch: int, epochs: int, total: int, initial: int = 0) -> None:
        if not self.tty:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            file=self.stream,
        )

    def update(self, n: int, **stats) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(stats, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)


class TensorBoard:
    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install tensorboard"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, row: dict) -> None:
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
