"""How much work each epoch does and how many epochs fit: progressive resizing and
``--time-budget`` planning.

Progressive resizing (fastai's, and the CIFAR/ImageNet speed runs'): the first epochs see
smaller images, which cost about (side / full side)^2 of a full-size step, rising linearly to
``--input-size`` for the last quarter of the run, so the network ends tuned to the size it
will be used at. Validation during the low-resolution epochs runs at a slightly larger side
than training ("FixRes", Touvron et al., arXiv:1906.06423: a net trained with random crops
at side s sees objects larger than a center crop shows them, and scores best tested at about
1.15 s), never above the full size; the last epochs and the test split use the full size,
the size written in model.json. Every size is a function of (epoch, epochs) alone, so a
resumed run picks up the schedule where it stopped.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from ..core.files import atomic_write_text
from ..data.transforms import BatchTransform
from . import distributed as D
from .config import dump_yaml
from .optim import apply_freezing, build_scheduler, frozen_groups, set_train_mode

START = 0.5  # first epoch at half the side: a quarter of the pixels and of the compute
FULL_SHARE = 0.25  # the last quarter of the epochs at the full size
FIXRES = 1.15  # test side / train side after random-crop training (arXiv:1906.06423, fig. 3)
MULTIPLE = 8  # sides on a multiple of 8: every stride-2 stage of a ResNet divides evenly
MIN_SIDE = 16
# Planning leaves 5 % of the budget to what the estimate misses (noise on a shared machine,
# checkpoints, the last evaluation).
SAFETY = 0.95
# An evaluation image costs about a third of a training one (forward only, no backward).
EVAL_COST = 1 / 3


# Training images the statistics are measured on (pycls and Detectron2 use ~1-10k for
# ImageNet; 512 keep a 95 % interval of a channel's mean within about +-0.1 std).
PRECISE_BN_IMAGES = 512


def precise_bn_batches(batch_size: int, steps_per_epoch: int) -> int:
    """Training batches the statistics are measured on."""
    return min(steps_per_epoch, math.ceil(PRECISE_BN_IMAGES / batch_size))


def _round(side: float) -> int:
    return max(MIN_SIDE, int(round(side / MULTIPLE)) * MULTIPLE)


def train_size(full: int, epoch: int, epochs: int, progressive: bool) -> int:
    """Side of the training images in ``epoch`` (0-based) of ``epochs``."""
    if not progressive or epochs < 2 or full <= MIN_SIDE:
        return full
    ramp = epochs - max(1, round(epochs * FULL_SHARE))  # epochs before the full-size ones
    if epoch >= ramp:
        return full
    low = min(full, _round(full * START))
    return min(full, _round(low + (full - low) * epoch / ramp))


def eval_size(full: int, trained_at: int) -> int:
    """Side to validate at after an epoch trained at ``trained_at`` (FixRes, capped)."""
    return full if trained_at >= full else min(full, _round(trained_at * FIXRES))


def resized(transform: BatchTransform, size: int) -> BatchTransform:
    """``transform`` with another output side (it resizes whatever it gets to that side)."""
    if transform.input_size == size:
        return transform
    out = copy.copy(transform)
    out.input_size = size
    return out


def epoch_costs(full: int, epochs: int, progressive: bool) -> list[float]:
    """Each epoch's compute relative to a full-size one (pixels: side squared)."""
    return [(train_size(full, e, epochs, progressive) / full) ** 2 for e in range(epochs)]


def plan_epochs(
    budget_seconds: float,
    step_seconds: float,
    steps_per_epoch: int,
    eval_seconds: float = 0.0,
    full: int = 32,
    progressive: bool = False,
    max_epochs: int = 10_000,
) -> int:
    """The most epochs whose steps (each ``step_seconds`` at full size, scaled by the
    epoch's pixels) and evaluations fit in ``SAFETY`` of ``budget_seconds``; at least 1."""
    budget = SAFETY * budget_seconds
    best = 1
    for epochs in range(1, max_epochs + 1):
        cost = sum(epoch_costs(full, epochs, progressive)) * steps_per_epoch * step_seconds
        if cost + epochs * eval_seconds > budget:
            break
        best = epochs
    return best


def measure_step_seconds(trainer, steps: int = 3) -> float:
    """Median seconds of a full-size training step of ``trainer`` (after one warm-up step),
    its model, optimizer and random state put back afterwards: the run starts untouched."""
    model = trainer.model
    frozen = frozen_groups(model, trainer.cfg, 0)
    apply_freezing(model, frozen)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(trainer.optimizer.state_dict())
    scaler = trainer.scaler
    saved_scaler = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    cache = trainer.feature_cache()
    loader = trainer.train_loader
    loader.sampler.set_epoch(0, 0)
    batches = cache.batches(loader.sampler, 0) if cache else loader
    tf = None if cache else trainer.train_transform
    times = []
    with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
        set_train_mode(model, frozen)
        for i, (x, y) in enumerate(batches):
            t0 = time.perf_counter()
            loss, _, _ = trainer.train_step(x, y, tf, i)
            float(loss)  # wait for the device
            times.append(time.perf_counter() - t0)
            if len(times) > steps:
                break
    model.load_state_dict(saved_model)
    trainer.optimizer.load_state_dict(saved_opt)
    if scaler is not None:
        scaler.load_state_dict(saved_scaler)
    times = sorted(times[1:] or times)  # the first step pays one-time setup
    return times[len(times) // 2]


def plan_for_budget(trainer) -> None:
    """--time-budget: measure the step, then set the run's length (and its schedule) so that
    it ends, fully annealed, within the budget, counted from here (data and model are ready);
    the plan is saved in config.yaml, so a resumed run keeps it."""
    cfg, start = trainer.cfg, time.perf_counter()
    step = D.broadcast_object(measure_step_seconds(trainer), trainer.dist)  # one plan for all
    steps = len(trainer.train_loader)
    val = len(trainer.data.source.splits.get("val", ()))
    eval_seconds = val / cfg.batch_size * step * EVAL_COST
    if trainer.features is None and cfg.precise_bn:  # each epoch measures BatchNorm again
        eval_seconds += precise_bn_batches(cfg.batch_size, steps) * step * EVAL_COST
    budget = cfg.time_budget * 60 - (time.perf_counter() - start)
    progressive = cfg.progressive and trainer.features is None
    epochs = plan_epochs(budget, step, steps, eval_seconds, trainer.data.input_size, progressive)
    # The warmup shrinks with the run (optim.WARMUP_MAX_SHARE), so a short plan still anneals.
    cfg.epochs = epochs
    trainer.scheduler = build_scheduler(trainer.optimizer, cfg, steps)
    if trainer.dist.is_main:
        atomic_write_text(trainer.run.config, dump_yaml(cfg))
        trainer.progress.line(
            f"--time-budget {cfg.time_budget:g} min: {step * 1000:.0f} ms a step, {steps} steps "
            f"an epoch: {epochs} epoch(s)"
        )
