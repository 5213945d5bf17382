"""What a training run prints while it runs: where it is, its progress line, the input and
classes it trains on, and each epoch's line."""

from __future__ import annotations

from ..artifacts.weights import (
    save_bundle,
)
from ..core.fmt import pct
from ..data.stats import imbalance_note
from .optim import recipe_line
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

    def _print_header(self, has_val: bool) -> None:
        """What a run says before its first epoch: the data, device, input and run folder,
        the weights, teacher and recipe, and the warnings about the data."""
        cfg = self.cfg
        self.progress.line(
            f"training {cfg.model} on {cfg.data}: {self._classes_text()}, "
            + ", ".join(f"{k} {len(v)}" for k, v in self.data.source.splits.items())
            + f"; {self.precision}, {self.device.type}"
            + (", channels_last" if cfg.channels_last else "")
            + f"; input {self._input_text()}; run folder {self.run_dir}"
        )
        if self.weights_note:
            self.progress.line(self.weights_note)
        if self.teacher is not None:
            self.progress.line(self.teacher.note)
        if self.resume_state is None:
            self.progress.line(recipe_line(cfg, len(self.train_loader)))
        note = imbalance_note(self.data.source.class_counts("train"))
        # Its remedies weigh single-label classes; labels of a multi-label set are not rivals.
        remedies_apply = cfg.class_weights == "none" and cfg.sampler == "none"
        if note and remedies_apply and self.task.warns_imbalance:
            self.progress.line(f"warning: {note}")
        if not has_val:
            self.progress.line(
                "warning: no validation images (too few per class to hold any out); the "
                "best epoch is the one with the lowest training loss, and `evaluate` needs "
                "--data with images of its own"
            )
        if self.resume_state is not None and self.epoch >= cfg.epochs:
            self.progress.line(
                f"{self.run_dir} has already completed its {cfg.epochs} epochs: nothing to "
                f"train; give --epochs N (more than {cfg.epochs}) to make it longer"
            )
