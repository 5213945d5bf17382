"""Calibrated probabilities: temperature scaling (Guo et al. 2017, arXiv:1706.04599).

Modern networks are over-confident: their top-1 probability is higher than how often they are
right. One scalar ``T > 0`` fitted on the validation split, ``softmax(logits / T)``, fixes most
of it without changing any prediction (the arg-max is the same). The expected calibration
error (ECE, the paper's eq. 3) measures the gap; :func:`reliability_bins` gives the data of a
reliability diagram (``plots.plot_reliability``).

Only torch: the engine, ``predict``, ``serve`` and ``report`` all use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from ..core.errors import ConfigError

# The paper's choice: 15 equal-width confidence bins.
DEFAULT_BINS = 15
# Near-separable validation logits pull T towards 0 (probabilities of exactly 1); such a T
# says nothing about new images, so it is bounded.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 100.0


def _check(logits_or_probs: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if logits_or_probs.ndim != 2 or logits_or_probs.shape[1] < 2:
        raise ConfigError(
            f"{what} must be (N, classes) with 2+ classes, got {tuple(logits_or_probs.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(logits_or_probs):
        raise ConfigError(
            f"labels must be (N,) for {len(logits_or_probs)} rows, got {tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise ConfigError("no samples to calibrate on: the validation split is empty")
    if (
        labels.dtype.is_floating_point
        or labels.min() < 0
        or labels.max() >= logits_or_probs.shape[1]
    ):
        raise ConfigError(f"labels must be class indices in [0, {logits_or_probs.shape[1]})")
    if not torch.isfinite(logits_or_probs).all():
        raise ConfigError(f"{what} hold NaN or infinite values; the model diverged")


def apply_temperature(logits: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Calibrated probabilities ``softmax(logits / T)``; ``T`` None means uncalibrated (1)."""
    t = float(temperature) if temperature else 1.0
    return torch.softmax(logits.float() / t, dim=-1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)`` on ``labels``.

    As the paper does: L-BFGS, here on ``log T`` (so T stays positive without a constraint),
    from T = 1, in float64 (a few thousand rows cost nothing). Bounded to
    [MIN_TEMPERATURE, MAX_TEMPERATURE]; 1 (no change) when every prediction is right, as on
    a small validation split the model has learnt perfectly: there is nothing to fit."""
    _check(logits, labels, "logits")
    z = logits.detach().to(torch.float64).cpu()
    y = labels.detach().long().cpu()
    if bool((z.argmax(1) == y).all()):
        # Every prediction right: the NLL falls without end as T -> 0 (its derivative in
        # 1/T is E[z] - z_label <= 0), so these samples show no over-confidence to correct.
        # Sharpening a small, perfectly-classified validation split would be pure overfitting.
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = math.exp(float(log_t.detach()))
    if not math.isfinite(t):
        return MAX_TEMPERATURE
    return min(max(t, MIN_TEMPERATURE), MAX_TEMPERATURE)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: how many predictions, their mean confidence, their accuracy.

    Bin ``i`` holds the confidences in ``(edges[i], edges[i + 1]]`` (the first also 0);
    an empty bin has ``None`` accuracy and confidence."""

    edges: list[float]
    counts: list[int]
    accuracy: list[float | None]
    confidence: list[float | None]

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of |accuracy - confidence|."""
        total = sum(self.counts)
        return sum(
            n * abs(a - c)
            for n, a, c in zip(self.counts, self.accuracy, self.confidence)
            if n and a is not None and c is not None
        ) / max(total, 1)

    def to_json(self) -> dict[str, Any]:
        """What ``plots.plot_reliability`` and JSON files take (with ``ece``)."""
        return {
            "edges": list(self.edges),
            "counts": list(self.counts),
            "accuracy": list(self.accuracy),
            "confidence": list(self.confidence),
            "ece": self.ece,
        }


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = DEFAULT_BINS
) -> ReliabilityBins:
    """Bin the top-1 confidence of ``probs`` (N, classes) into ``bins`` equal-width bins."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a whole number of at least 1, got {bins!r}")
    _check(probs, labels, "probabilities")
    conf, pred = probs.detach().double().cpu().max(dim=1)
    correct = (pred == labels.detach().cpu().long()).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    # Right-closed bins as in the paper: a confidence of exactly 1 is in the last bin, and
    # 0 (impossible for a top-1 probability) would be in the first.
    index = (torch.bucketize(conf, edges, right=False) - 1).clamp_(0, bins - 1)
    counts = torch.bincount(index, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    acc = [float(a / n) if n else None for a, n in zip(acc_sum, counts)]
    mean_conf = [float(c / n) if n else None for c, n in zip(conf_sum, counts)]
    return ReliabilityBins(edges.tolist(), [int(n) for n in counts], acc, mean_conf)


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = DEFAULT_BINS
) -> float:
    """ECE (Guo et al. eq. 3) of ``probs`` (N, classes) against ``labels`` (N,), in [0, 1]."""
    return reliability_bins(probs, labels, bins).ece


def calibration_summary(
    logits: torch.Tensor, labels: torch.Tensor, bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """Fit T on (validation) ``logits`` and measure ECE before and after.

    Returns ``{"temperature", "ece_before", "ece_after", "reliability_before",
    "reliability_after"}``: the first three are summary.json's keys, the last two the data
    of the report's reliability diagram."""
    t = fit_temperature(logits, labels)
    before = reliability_bins(apply_temperature(logits, None), labels, bins)
    after = reliability_bins(apply_temperature(logits, t), labels, bins)
    return {
        "temperature": t,
        "ece_before": before.ece,
        "ece_after": after.ece,
        "reliability_before": before.to_json(),
        "reliability_after": after.to_json(),
    }
