"""Temperature scaling recovers a known over-confidence and lowers the calibration error."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from resnetlab.core.errors import ConfigError
from resnetlab.core.plots import plot_reliability
from resnetlab.metrics.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def calibrated(n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits that are calibrated by construction: each label is drawn from softmax(logits)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g)[:, 0]
    return logits, labels


def test_an_over_confident_model_gets_its_temperature_back():
    logits, labels = calibrated()
    hot = 5 * logits  # what an over-fitted network does: the same ranking, sharper
    t = fit_temperature(hot, labels)
    assert t == pytest.approx(5, rel=0.08)
    summary = calibration_summary(hot, labels)
    assert summary["temperature"] == t
    assert summary["ece_before"] > 0.15  # 5x too sharp: confident far beyond its accuracy
    assert summary["ece_after"] < 0.04
    assert summary["ece_after"] < summary["ece_before"] / 4
    # Calibration never changes a prediction.
    assert torch.equal(apply_temperature(hot, t).argmax(1), hot.argmax(1))


def test_calibrated_logits_keep_a_temperature_near_one():
    logits, labels = calibrated(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1, abs=0.08)
    assert expected_calibration_error(torch.softmax(logits, 1), labels) < 0.04
    # Under-confident (too soft) logits are sharpened: T < 1.
    assert fit_temperature(logits / 3, labels) == pytest.approx(1 / 3, rel=0.08)


def test_a_validation_split_that_is_all_right_is_left_as_it_is():
    # No mistake to learn from: the NLL only falls as T -> 0; a perfect small split must not
    # make every later prediction 100 % sure.
    logits = torch.tensor([[30.0, 0.0], [0.0, 30.0], [2.0, 0.0]])
    assert fit_temperature(logits, torch.tensor([0, 1, 0])) == 1.0
    # One mistake among them: a finite, bounded fit.
    t = fit_temperature(logits, torch.tensor([0, 1, 1]))
    assert MIN_TEMPERATURE <= t <= MAX_TEMPERATURE and math.isfinite(t) and t != 1.0


def test_reliability_bins_by_hand():
    probs = torch.tensor([[0.95, 0.05], [0.92, 0.08], [0.58, 0.42], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 0, 1])
    bins = reliability_bins(probs, labels, bins=2)
    assert bins.edges == [0.0, 0.5, 1.0]
    assert bins.counts == [0, 4]  # top-1 confidences are all above 0.5
    assert bins.accuracy == [None, 0.75]
    assert bins.confidence[1] == pytest.approx(0.75)  # (0.95 + 0.92 + 0.58 + 0.55) / 4
    assert bins.ece == pytest.approx(0.0, abs=1e-7)  # right on average in one wide bin
    ten = reliability_bins(probs, labels, bins=10)
    assert ten.counts[9] == 2 and ten.counts[5] == 2  # (0.9, 1] and (0.5, 0.6]
    # (0.9, 1]: half right at confidence 0.935; (0.5, 0.6]: all right at 0.565
    assert ten.accuracy[9] == 0.5 and ten.accuracy[5] == 1.0
    assert ten.ece == pytest.approx(0.5 * 0.435 + 0.5 * 0.435, abs=1e-6)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="empty"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="class indices"):
        fit_temperature(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match="NaN"):
        fit_temperature(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ConfigError, match="bins"):
        reliability_bins(torch.full((1, 2), 0.5), torch.tensor([0]), bins=0)


def test_reliability_diagram_png(tmp_path):
    logits, labels = calibrated(n=500)
    s = calibration_summary(5 * logits, labels)
    path = tmp_path / "reliability.png"
    plot_reliability(
        [
            ("before (T = 1)", s["reliability_before"]),
            (f"after (T = {s['temperature']:.2f})", s["reliability_after"]),
        ],
        path,
    )
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 300
