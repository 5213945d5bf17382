"""LR range test (Smith, arXiv:1506.01186): raise the lr exponentially, watch the loss."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime

from ..core.files import atomic_write_text
from ..core.plots import plot_lr_find
from .config import TrainConfig
from .optim import apply_freezing, frozen_groups, set_train_mode


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the lr at the lowest smoothed loss: the classic rule of the range test
    (at the minimum itself training is already on the edge of diverging)."""
    i = min(range(len(losses)), key=losses.__getitem__)
    return lrs[i] / 10


def lr_find(
    cfg: TrainConfig, start_lr: float = 1e-6, end_lr: float = 10.0, num_steps: int = 100
) -> dict:
    """Run the range test on the configured model and data; write its plot and JSON into
    the run folder. Returns the JSON's mapping (``lrs``, ``losses``, ``suggestion``, ``plot``)
    and ``figures``: ``{"lr_find": Figure}``, the plot's matplotlib Figure."""
    from .engine import Trainer

    name = cfg.name or f"lr-find-{cfg.model}-{datetime.now():%Y%m%d-%H%M%S}"
    cfg = dataclasses.replace(cfg, schedule="constant", warmup_epochs=0.0, name=name)
    t = Trainer(cfg, verbose=False)
    model = t.model
    apply_freezing(model, frozen_groups(model, cfg, 0))
    set_train_mode(model, frozen_groups(model, cfg, 0))
    mults = [g["lr"] / cfg.lr for g in t.optimizer.param_groups]
    gamma = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    lrs, losses, smooth, best = [], [], 0.0, math.inf
    lr, step = start_lr, 0
    while step < num_steps:
        t.train_loader.sampler.set_epoch(t.epoch)
        for i, (x, y) in enumerate(t.train_loader):
            for g, m in zip(t.optimizer.param_groups, mults):
                g["lr"] = lr * m
            loss, _, _ = t.train_step(x, y, t.train_transform, i)
            value = loss.item()  # one sync per step is fine here: 100 steps, no training
            if not math.isfinite(value):
                break
            smooth = 0.98 * smooth + 0.02 * value
            debiased = smooth / (1 - 0.98 ** (step + 1))
            lrs.append(lr)
            losses.append(debiased)
            best = min(best, debiased)
            step += 1
            lr *= gamma
            if debiased > 4 * best or step >= num_steps:
                break
        else:
            t.epoch += 1
            continue
        break
    t.close()  # the run folder's lock: no checkpoint follows
    suggestion = suggest_lr(lrs, losses)
    plot = t.run.lr_find_plot
    drawn = plot_lr_find(lrs, losses, suggestion, plot, cfg.model)
    result = {"lrs": lrs, "losses": losses, "suggestion": suggestion, "plot": str(plot)}
    atomic_write_text(t.run.lr_find_json, json.dumps(result, indent=2))
    return {**result, "figures": {"lr_find": drawn}}
