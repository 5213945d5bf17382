"""What a training run prints while it runs: where it is, its progress line, the input and
classes it trains on, and each epoch's line."""

from __future__ import annotations

from ..artifacts.weights import (
    save_bundle,
)
from ..core.fmt import pct
from .tally import EpochTally


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


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
        if self.multilabel:
            return f"{_count(len(self.classes), 'label')} (multi-label)"
        return _count(len(self.classes), "class")

    def _epoch_outputs(self, row: dict, improved: bool) -> None:
        self.metrics_csv.write(self.history)
        if self.tb is not None:
            self.tb.log(row)
        self.save(self.run.last_checkpoint)
        if improved:
            self.save(self.run.best_checkpoint)
            save_bundle(self.eval_model(), self.model_meta(), self.run_dir)
        if self.multilabel:  # top-1 means nothing here: exact match, and val mAP
            measure = "exact"
            val = (
                f"  val loss {row['val_loss']:.4f} exact {pct(row['val_exact_match'])} "
                f"mAP {pct(row['val_map'])}"
                if row.get("val_map") is not None
                else ""
            )
        else:
            measure = "top-1"
            val = (
                f"  val loss {row['val_loss']:.4f} top-1 {pct(row['val_top1'])}"
                if row["val_top1"] is not None
                else ""
            )
        self.progress.line(
            f"epoch {row['epoch']:>3}/{self.cfg.epochs}  lr {row['lr']:.4g}  train loss "
            f"{row['train_loss']:.4f} {measure} {pct(row['train_top1'])}{val}  "
            f"{row['seconds']:.1f}s" + ("  *" if improved else "")
        )
