"""What a training run prints while it runs: where it is, its progress line, the input and
classes it trains on, and each epoch's line."""

from __future__ import annotations

from ..artifacts.weights import (
    save_bundle,
)
from ..core.fmt import pct
from .tally import EpochTally


class RunPrinting:
    """The lines a ``Trainer`` prints."""

    def _position(self) -> str:
        if self.step_in_epoch:
            return f"epoch {self.epoch + 1}, step {self.step_in_epoch}"
        return f"after epoch {self.epoch}"

    def _log_progress(self, tally: EpochTally, check: bool = True) -> None:
        """Show the step, loss and images/s. ``check``: the pending losses are checked for
        NaN first (every LOG_EVERY steps, on every rank alike); an update between those, which
        only rank 0 makes, reads the last loss without raising, so the ranks stay in step."""
        if check:
            self._check_finite(tally)
        last = tally.pending[-1].item() if tally.pending else self.step_losses[-1]
        self.progress.update_to(
            self.step_in_epoch, loss=f"{last:.3f}", img_s=f"{tally.images_per_second():.0f}"
        )

    def _input_text(self) -> str:
        size, note = self.data.input_size, self.data.size_note
        return f"{size}x{size}, {self.data.preset} preset" + (f" ({note})" if note else "")

    def _classes_text(self) -> str:
        return self.task.classes_text(len(self.classes))

    def _epoch_outputs(self, row: dict, improved: bool) -> None:
        self.metrics_csv.write(self.history)
        if self.tb is not None:
            self.tb.log(row)
        self.save(self.run.last_checkpoint)
        if improved:
            self.save(self.run.best_checkpoint)
            save_bundle(self.eval_model(), self.model_meta(), self.run_dir)
        measure, val = self.task.epoch_text(row)
        self.progress.line(
            f"epoch {row['epoch']:>3}/{self.cfg.epochs}  lr {row['lr']:.4g}  train loss "
            f"{row['train_loss']:.4f} {measure} {pct(row['train_top1'])}{val}  "
            f"{row['seconds']:.1f}s" + ("  *" if improved else "")
        )
