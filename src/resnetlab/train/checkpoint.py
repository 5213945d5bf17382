"""Checkpoints: complete training state, plain tensors and values only, written atomically."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..artifacts.run import RunDir
from ..artifacts.weights import WeightsError, safe_torch_load
from ..core.files import atomic_torch_save
from ..core.fmt import shell_command

FORMAT = "resnetlab-checkpoint"
VERSION = 1


def capture_rng() -> dict:
    """Every RNG the run touches, as values ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: str | Path) -> None:
    atomic_torch_save({"format": FORMAT, "version": VERSION, **state}, path)


def resolve_checkpoint_path(run_or_file: str | Path) -> Path:
    p = Path(run_or_file)
    if p.is_dir():
        run = RunDir(p)
        if not run.last_checkpoint.is_file() and run.has_config():
            raise WeightsError(
                f"{p}: the run stopped before its first checkpoint; nothing to resume. Start "
                "it again: "
                + shell_command("resnetlab", "train", "--config", run.config)
                + " (the folder is reused)"
            )
        p = run.last_checkpoint
    if not p.is_file():
        raise WeightsError(
            f"{p}: no checkpoint to resume from (give a run folder with "
            f"{RunDir.LAST_CHECKPOINT}, or a checkpoint file)"
        )
    return p


def load_checkpoint(path: str | Path) -> dict:
    """Load and check one of our checkpoints; a truncated or foreign file is a clear error."""
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: not a resnetlab training checkpoint (use --weights for plain weights)"
        )
    if state.get("version", 0) > VERSION:
        raise WeightsError(f"{path}: written by a newer resnetlab (format {state['version']})")
    for key in ("model", "optimizer", "scheduler", "epoch", "config", "classes", "rng"):
        if key not in state:
            raise WeightsError(f"{path}: checkpoint is incomplete (no {key!r})")
    return state


def load_for_resume(run_or_file: str | Path) -> tuple[Path, dict]:
    """The checkpoint to continue from; a damaged one points to the best epoch's."""
    path = resolve_checkpoint_path(run_or_file)
    run = RunDir(path.parent)
    run.clear_stale_temp_files()
    try:
        return path, load_checkpoint(path)
    except WeightsError as exc:
        best = run.best_checkpoint
        if path.name == best.name or not best.is_file():
            raise
        raise WeightsError(
            f"{exc}. {best} is a separate file from the best epoch: continue from it with "
            + shell_command("resnetlab", "train", "--resume", best)
        ) from None
