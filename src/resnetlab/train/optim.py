"""Optimizers, learning-rate schedules and freezing."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

_NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases and norm parameters. Decay on them does not regularise (a BN layer is scale
    invariant) and is left out by common recipes (Jia et al., arXiv:1807.11205; timm)."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, _NORM_TYPES) or p_name == "bias":
                names.add(full)
    return names


# Linear scaling (Goyal et al. 2017, arXiv:1706.02677): the peak lr is LR_PER_256 x (global
# batch / 256) when --lr is not given. Measured (benchmarks/time_to_accuracy.py): resnet18 on
# the digits at batch 64, 2 epochs: 0.05 (the old fixed default) ends at 78-85 % test top-1,
# 0.025 (this rule) at 92-95 %.
LR_PER_256 = 0.1


def default_lr(cfg: TrainConfig, world_size: int | None = None) -> float:
    """The peak lr that linear scaling gives the run's global batch (all processes)."""
    if world_size is None:
        dist = torch.distributed
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return LR_PER_256 * cfg.batch_size * world_size / 256


def peak_lr(cfg: TrainConfig) -> float:
    """``--lr`` when given, else the linear-scaling default."""
    return cfg.lr if cfg.lr is not None else default_lr(cfg)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Head vs backbone (``backbone_lr_mult``) x decay vs no-decay. Frozen parameters stay in
    the groups (they have no gradient, so the optimizer skips them) so unfreezing later needs
    no new optimizer and resumes cleanly."""
    no_decay = set() if cfg.decay_norm_and_bias else _no_decay_names(model)
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        part = "head" if id(p) in head_ids else "backbone"
        groups.setdefault((part, name not in no_decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        mult = cfg.backbone_lr_mult if part == "backbone" else 1.0
        out.append(
            {
                "params": params,
                "lr": peak_lr(cfg) * mult,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            }
        )
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimizer. A ``cfg.lr`` left unset is set here, from the batch size
    (``default_lr``), so the saved config.yaml holds the number the run used."""
    cfg.lr = peak_lr(cfg)
    groups = param_groups(model, cfg)
    # The fused kernels update every parameter in one pass (~10 % faster steps for resnet18
    # on the CPU, see benchmarks/); fp32 parameters on CPU or CUDA only.
    fused = all(
        p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in model.parameters()
    )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            fused=fused or None,
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


# Warmup takes at most this share of a run. In a long run --warmup-epochs decides (1 of 20
# epochs by default); in a short one a whole epoch of warmup leaves too little time at the
# peak and for annealing: resnet18 on the digits, 2 epochs, lr 0.05: 55 % test top-1 with 1
# warmup epoch, 85 % with 0.2 (benchmarks/time_to_accuracy.py, docs in the README).
WARMUP_MAX_SHARE = 0.1


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Steps of linear warmup: ``--warmup-epochs``, at most ``WARMUP_MAX_SHARE`` of the run."""
    epochs = min(cfg.warmup_epochs, WARMUP_MAX_SHARE * cfg.epochs)
    return int(round(epochs * steps_per_epoch))


def recipe_line(cfg: TrainConfig, steps_per_epoch: int) -> str:
    """One line saying which recipe the run follows, its main settings, and how to change them."""
    # Without a recipe: "scratch", or "default" for pretrained weights (feature extraction).
    name = cfg.recipe or ("default" if cfg.weights else "scratch")
    why = {"finetune": " (chosen for --weights; --recipe scratch for the from-scratch one)"}
    opt = "SGD" + (" nesterov" if cfg.nesterov and cfg.momentum > 0 else "")
    opt = opt if cfg.optimizer == "sgd" else "AdamW"
    lr = f"lr {cfg.lr:.4g}"
    if cfg.lr == default_lr(cfg):
        lr += f" (0.1 x batch {cfg.batch_size} / 256)"
    else:
        lr += f", batch {cfg.batch_size}"
    warmup = warmup_steps(cfg, steps_per_epoch) / steps_per_epoch
    return (
        f"recipe {name}{why.get(name, '')}: {opt} {lr}, {cfg.schedule}, warmup {warmup:.2g} "
        f"epoch(s), label smoothing {cfg.label_smoothing:g}; flags (--lr, --optimizer, ...) "
        "override any of it"
    )


def lr_factor(cfg: TrainConfig, steps_per_epoch: int):
    """Multiplier of the base lr at optimizer step ``s`` (0-based), for LambdaLR."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = warmup_steps(cfg, steps_per_epoch)

    def milestones_steps():
        # Values below 1 are fractions of the run (0.5 = half way); others are epochs.
        return sorted(
            int(round((m * cfg.epochs if m < 1 else m) * steps_per_epoch)) for m in cfg.milestones
        )

    marks = milestones_steps()

    def factor(step: int) -> float:
        if cfg.schedule == "onecycle":
            # Smith & Topin (arXiv:1708.07120): 30 % linear rise from lr/25, then cosine to ~0.
            peak = max(1, int(0.3 * total))
            if step < peak:
                return 0.04 + 0.96 * step / peak
            t = min(1.0, (step - peak) / max(1, total - peak))
            return 0.5 * (1 + math.cos(math.pi * t)) * (1 - 1e-4) + 1e-4
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * t))
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(step >= m for m in marks)
        return 1.0

    if not getattr(cfg, "swa_epochs", 0):
        return factor
    # --swa-epochs: the averaged epochs run at a constant lr (Izmailov et al. 2018), --swa-lr
    # or the schedule's own where they begin.
    start = max(0, cfg.epochs - cfg.swa_epochs) * steps_per_epoch
    held = cfg.swa_lr / peak_lr(cfg) if cfg.swa_lr else factor(max(0, start - 1))

    def swa_factor(step: int) -> float:
        return held if step >= start else factor(step)

    return swa_factor


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


# ------------------------------------------------------------------------------- freezing


def frozen_groups(model: nn.Module, cfg: TrainConfig, epoch: int) -> list[str]:
    """Names of parameter groups (stem, layer1, ...) frozen during ``epoch`` (0-based).

    feature-extract freezes everything but the head. ``unfreeze_schedule`` [e1, e2, ...]
    starts with the backbone frozen and unfreezes one more stage, from the top, at each epoch
    listed (fastai's gradual unfreezing); from the last epoch listed on, everything trains."""
    backbone = [name for name, _ in model.parameter_groups() if name != "head"]
    mode = cfg.resolved_mode
    if mode == "feature-extract":
        return backbone
    if cfg.unfreeze_schedule:
        thawed = sum(epoch >= e for e in sorted(cfg.unfreeze_schedule))
        if thawed >= len(cfg.unfreeze_schedule):
            return []
        return backbone[: max(0, len(backbone) - thawed)]
    return []


def apply_freezing(model: nn.Module, frozen: list[str]) -> None:
    for name, modules in model.parameter_groups():
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(name not in frozen)


def set_train_mode(model: nn.Module, frozen: list[str]) -> None:
    """``model.train()``, except frozen groups' norm layers stay in eval mode so their running
    statistics do not drift while their weights are fixed."""
    model.train()
    for name, modules in model.parameter_groups():
        if name in frozen:
            for m in modules:
                m.eval()
