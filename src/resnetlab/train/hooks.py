"""What happens around each epoch of a run, as hooks on named events.

The loop in ``engine.Trainer._fit`` trains an epoch, validates it, and records it; everything
else a run may do on the way is a ``Hook`` with a method per event it acts on:

- ``fit_start(trainer)``: data and model are ready, nothing trained yet in this process;
- ``epoch_trained(trainer, stats)``: an epoch's training pass is over, before validation
  (``stats``: its training loss, top-1, seconds);
- ``epoch_end(trainer, row, improved)``: the epoch's history ``row`` is in
  ``trainer.state.history``; return a sentence to end the run there (early stopping).

``default_hooks(cfg, on_epoch_end)`` is the list a run gets from its settings, in order: the
time budget, stochastic weight averaging, precise BatchNorm, the epoch's records
(``metrics.csv``, TensorBoard, trackers, the epoch line), the caller's callback (a tune
trial's pruning) and early stopping. ``Trainer(hooks=[...])`` adds a user's own after them.
"""

from __future__ import annotations

from collections.abc import Callable


class Hook:
    """Does nothing on every event; a hook overrides the events it acts on."""

    def fit_start(self, trainer) -> None:
        """Before the first epoch this process trains."""

    def epoch_trained(self, trainer, stats: dict) -> None:
        """After an epoch's training pass, before its validation."""

    def epoch_end(self, trainer, row: dict, improved: bool) -> str | None:
        """After the epoch is validated and recorded; a sentence ends the run here."""
        return None


class TimeBudget(Hook):
    """--time-budget: measure a step, then fit the run's length and schedule in the budget."""

    def fit_start(self, trainer) -> None:
        from .pacing import plan_for_budget

        if trainer.resume_state is None and trainer.state.global_step == 0:
            plan_for_budget(trainer)


class AverageWeights(Hook):
    """--swa-epochs: each averaged epoch added to the average, its BatchNorm measured."""

    def epoch_trained(self, trainer, stats: dict) -> None:
        trainer.swa.epoch_end(trainer)


class PreciseBatchNorm(Hook):
    """--precise-bn: the evaluation model's BatchNorm statistics measured again on the
    epoch's first training images (not while the weight average stands in for it)."""

    def epoch_trained(self, trainer, stats: dict) -> None:
        from .precise_bn import recompute_bn_stats

        if not (trainer.swa is not None and trainer.swa.active):
            recompute_bn_stats(trainer)


class EpochRecords(Hook):
    """metrics.csv, TensorBoard, the trackers and the epoch line (the main process)."""

    def epoch_end(self, trainer, row: dict, improved: bool) -> None:
        if trainer.dist.is_main:
            trainer._epoch_outputs(row, improved)


class Callback(Hook):
    """A function called with each epoch's row; it may raise to stop (a pruned tune trial)."""

    def __init__(self, fn: Callable[[dict], object]) -> None:
        self.fn = fn

    def epoch_end(self, trainer, row: dict, improved: bool) -> None:
        self.fn(row)


class EarlyStopping(Hook):
    """--patience N: end the run after N epochs without a better validation score."""

    def __init__(self, patience: int) -> None:
        self.patience, self.stale = patience, 0

    def epoch_end(self, trainer, row: dict, improved: bool) -> str | None:
        self.stale = 0 if improved else self.stale + 1
        if self.stale >= self.patience:
            return f"early stop: no val improvement for {self.patience} epochs"
        return None


def default_hooks(cfg, on_epoch_end: Callable[[dict], object] | None = None) -> list[Hook]:
    """The hooks a run's settings ask for, in the order they act."""
    hooks: list[Hook] = []
    if cfg.time_budget:
        hooks.append(TimeBudget())
    if cfg.swa_epochs:
        hooks.append(AverageWeights())
    if cfg.precise_bn:
        hooks.append(PreciseBatchNorm())
    hooks.append(EpochRecords())
    if on_epoch_end is not None:
        hooks.append(Callback(on_epoch_end))
    if cfg.patience:
        hooks.append(EarlyStopping(cfg.patience))
    return hooks
