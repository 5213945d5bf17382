"""Imbalanced classes: per-class loss weights (``--class-weights``).

A class with a tenth of the images of another contributes a tenth of the loss, and a net
trained on it learns to answer the big class when in doubt: top-1 looks fine, the small
class's recall does not. Weighting the loss by class evens out what each class contributes:

- ``auto`` / ``inverse``: inverse frequency, ``N / (K * n_c)`` (scikit-learn's "balanced").
- ``effective[:BETA]``: the inverse "effective number of samples" ``(1 - β^n) / (1 - β)``
  (Cui et al. 2019, arXiv:1901.05555): between no weighting (β = 0) and inverse frequency
  (β -> 1), for sets whose big classes hold many near-duplicates. Default β = 0.999.
- ``none``: every class 1.
- a ``FILE`` (JSON or YAML): ``{class: weight}`` for every class, or a list in class order.

Weights are scaled so that the weighted mean over the training samples is 1: the loss keeps
its usual size and the learning rate its meaning. ``--sampler balanced`` (``data.balanced``)
is the other remedy: it evens out what each *batch* holds instead of the loss.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..core.errors import ConfigError
from ..data.stats import imbalance_note, imbalance_ratio

__all__ = [
    "CLASS_WEIGHT_MODES",
    "class_weights",
    "imbalance_note",
    "imbalance_ratio",
    "resolve_class_weights",
]

CLASS_WEIGHT_MODES = ("none", "auto", "inverse", "effective")
# Cui et al. 2019 report β = 0.999 best on long-tailed CIFAR and 0.9999 on larger sets.
DEFAULT_BETA = 0.999


def _normalise(w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Scale ``w`` so that the sample-weighted mean is 1 (sum w_c n_c = N)."""
    total = float((w * counts).sum())
    return w * (float(counts.sum()) / total) if total > 0 else w


def class_weights(counts: Sequence[int], mode: str = "auto", beta: float = DEFAULT_BETA):
    """Per-class loss weights (float32, one per class) for training ``counts``; None for
    ``none``. A class with no training image gets weight 0 (it never is a target)."""
    if mode == "none":
        return None
    n = torch.as_tensor([int(c) for c in counts], dtype=torch.float64)
    if n.numel() == 0 or bool((n < 0).any()):
        raise ConfigError(f"class counts must be non-negative, one per class, got {list(counts)}")
    present = n > 0
    if not bool(present.any()):  # e.g. shards without an index: nothing to weight by
        raise ConfigError("--class-weights: the training split's class counts are unknown")
    if mode in ("auto", "inverse"):
        w = torch.where(present, 1.0 / n.clamp(min=1), torch.zeros_like(n))
    elif mode == "effective":
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"--class-weights effective:BETA needs 0 <= BETA < 1, got {beta}")
        effective = (1.0 - beta**n) / (1.0 - beta)
        w = torch.where(present, 1.0 / effective.clamp(min=1e-12), torch.zeros_like(n))
    else:
        raise ConfigError(
            f"--class-weights {mode!r} is not one of {', '.join(CLASS_WEIGHT_MODES)} or a file"
        )
    return _normalise(w, n).float()


def _from_file(path: Path, classes: Sequence[str]) -> torch.Tensor:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--class-weights {path}: not readable JSON/YAML ({exc})") from None
    if isinstance(data, Mapping):
        missing = [c for c in classes if c not in data]
        unknown = [str(k) for k in data if k not in classes]
        if missing or unknown:
            raise ConfigError(
                f"--class-weights {path}: "
                + "; ".join(
                    part
                    for part in (
                        f"no weight for {', '.join(missing[:10])}" if missing else "",
                        f"not classes of the data: {', '.join(unknown[:10])}" if unknown else "",
                    )
                    if part
                )
            )
        values = [data[c] for c in classes]
    elif isinstance(data, list):
        if len(data) != len(classes):
            raise ConfigError(
                f"--class-weights {path}: {len(data)} weights for {len(classes)} classes"
            )
        values = data
    else:
        raise ConfigError(f"--class-weights {path}: expected {{class: weight}} or a list")
    try:
        w = torch.tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"--class-weights {path}: every weight must be a number") from None
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ConfigError(f"--class-weights {path}: weights must be finite, >= 0, not all 0")
    return w


def resolve_class_weights(
    value: str | None, classes: Sequence[str], counts: Sequence[int]
) -> torch.Tensor | None:
    """What ``--class-weights VALUE`` means for these classes and training counts: a mode
    (``auto``, ``inverse``, ``effective[:BETA]``, ``none``) or a file; None: unweighted."""
    if value is None or value == "none":
        return None
    mode, _, beta = str(value).partition(":")
    if mode in CLASS_WEIGHT_MODES:
        if beta and mode != "effective":
            raise ConfigError(f"--class-weights {value!r}: only effective takes :BETA")
        try:
            b = float(beta) if beta else DEFAULT_BETA
        except ValueError:
            raise ConfigError(f"--class-weights {value!r}: BETA must be a number") from None
        return class_weights(counts, mode, b)
    path = Path(value)
    if not path.is_file():
        raise ConfigError(
            f"--class-weights {value!r} is not one of {', '.join(CLASS_WEIGHT_MODES)} "
            "(effective:BETA) nor an existing JSON/YAML file"
        )
    return _from_file(path, classes)
