"""Stochastic weight averaging (``train --swa-epochs N``) and the BatchNorm statistics of
averaged weights (also ``resnetlab average``).

Izmailov et al. 2018 ("Averaging Weights Leads to Wider Optima and Better Generalization",
arXiv:1803.05407): the weights at the end of each of the last N epochs, trained at a constant
learning rate (``--swa-lr``, else the schedule's own where averaging begins, held; see
``optim.lr_factor``), are averaged with equal weight by ``torch.optim.swa_utils.AveragedModel``.

An average of weights is not an average of networks: the running statistics of BatchNorm,
gathered while the members trained, do not describe the averaged network's activations. After
each averaged epoch they are measured again (``measure_bn``), as
``torch.optim.swa_utils.update_bn`` measures them: every BatchNorm layer that trains reset and
set to a plain average (momentum None) over one pass of the training images, the rest of the
network in evaluation mode. The images are the training split as evaluation sees them (no
augmentation), in batches of the run's --batch-size, in fp32: deterministic, so the statistics
stored with the weights can be measured again from the run folder and compared (a test does).
It costs one forward pass over the training split per averaged epoch, counted in the run's time.

From the first averaged epoch on, the average is the run's model: it is what is evaluated on
validation after each epoch, saved as ``model.safetensors`` (the last average, of all N
epochs) and in the checkpoints' ``ema`` slot, where every loader looks for evaluation weights;
the checkpoints also hold the count of epochs averaged, so a resumed run continues the same
average (``torch.equal`` to an uninterrupted one).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..artifacts.weights import unwrap_model
from . import distributed as D
from .optim import frozen_groups
from .precise_bn import _training_norms


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` that keeps running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def measure_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    norms: list[nn.modules.batchnorm._BatchNorm] | None = None,
) -> int:
    """Measure the running statistics of ``norms`` (default: every BatchNorm layer of
    ``model``) again over ``batches`` (model inputs), as ``torch.optim.swa_utils.update_bn``
    does: reset, then a plain average over the batches, those layers in training mode and the
    rest of the model in evaluation mode (no dropout, no stochastic depth). Returns the images
    seen; the model's modes and momenta are left as they were."""
    norms = batch_norms(model) if norms is None else norms
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return seen


def training_images(data, device: torch.device, channels_last: bool = True):
    """The training split as evaluation sees it (no augmentation), batch by batch on
    ``device``: the images averaged weights measure their BatchNorm statistics on. The global
    random generator is kept as it was (decoding files reseeds it)."""
    loader, tf = data.split_loader("train", channels_last=channels_last)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for x, _ in loader:
            yield tf(x.to(device, non_blocking=True))


class WeightAverager:
    """The SWA average of a ``Trainer``'s model over its last ``cfg.swa_epochs`` epochs."""

    def __init__(self, trainer) -> None:
        self.averaged = AveragedModel(unwrap_model(trainer.model))

    @property
    def model(self) -> nn.Module:
        """The averaged network (its BatchNorm statistics measured for its weights)."""
        return self.averaged.module

    @property
    def count(self) -> int:
        """Epochs averaged so far."""
        return int(self.averaged.n_averaged)

    @property
    def active(self) -> bool:
        return self.count > 0

    @staticmethod
    def first_epoch(cfg) -> int:
        """The first averaged epoch, 1-based."""
        return max(0, cfg.epochs - cfg.swa_epochs) + 1

    def epoch_end(self, trainer) -> None:
        """After epoch ``trainer.epoch`` (1-based, just finished): in the averaged epochs, add
        the weights to the average and measure its BatchNorm statistics again. An average
        once begun goes on every epoch (a run resumed with more --epochs averages them too)."""
        cfg = trainer.cfg
        if not self.active and trainer.epoch < self.first_epoch(cfg):
            return
        start = time.perf_counter()
        first = not self.active
        self.averaged.update_parameters(unwrap_model(trainer.model))
        model = self.model
        norms = _training_norms(model, frozen_groups(model, cfg, trainer.epoch - 1))
        images = 0
        if norms:
            batches = training_images(trainer.data, trainer.device, cfg.channels_last)
            images = measure_bn(model, batches, norms)
        D.broadcast_buffers(model, trainer.dist)
        trainer.train_seconds += time.perf_counter() - start
        if first and trainer.dist.is_main:
            last = max(cfg.epochs, trainer.epoch)
            epochs = (
                f"epochs {trainer.epoch}-{last}"
                if last > trainer.epoch
                else (f"epoch {last} (the last)")
            )
            lr = trainer.optimizer.param_groups[-1]["lr"]
            measured = "no BatchNorm statistics to measure"
            if norms:
                measured = (
                    f"its BatchNorm statistics measured again on the {images} training images"
                )
            trainer.progress.line(
                f"SWA: averaging the weights of {epochs} at lr {lr:.4g}, "
                f"{measured}; the average is the run's model from here on"
            )

    def state(self) -> dict:
        """What a checkpoint keeps: the average (in the ``ema`` slot, which every loader reads
        as the evaluation weights) and how many epochs it holds."""
        return {"ema": self.model.state_dict() if self.active else None, "swa_averaged": self.count}

    def restore(self, state: dict) -> None:
        n = int(state.get("swa_averaged") or 0)
        if n and state.get("ema"):
            self.model.load_state_dict(state["ema"])
            self.averaged.n_averaged.fill_(n)
