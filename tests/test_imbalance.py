"""Imbalanced classes: loss weights and the balanced sampler raise balanced accuracy on a 10:1
folder; evaluation reports balanced accuracy and macro-F1; stats names the remedies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from resnetlab.analysis.evaluate import balanced_metrics
from resnetlab.core.errors import ConfigError, DataError
from resnetlab.data import DataConfig, build_pipeline, dataset_stats, load_source
from resnetlab.data.balanced import BalancedSampler, make_sampler
from resnetlab.data.stats import format_report, imbalance_note
from resnetlab.train.imbalance import class_weights, resolve_class_weights

MAJOR, MINOR = 200, 20  # 10:1
TEST_EACH = 60  # a balanced test split, so balanced accuracy is measured evenly


def imbalanced_folder(root: Path, seed: int = 0) -> Path:
    """DIR/{train,test}/{common,rare}/*.png: noisy colour casts, "rare" redder on average.

    The classes overlap (noise larger than the tint), so a classifier must choose where to
    put the boundary; unweighted, 10:1 pulls it deep into the rare class."""
    rng = np.random.default_rng(seed)
    for split, sizes in (("train", (MAJOR, MINOR)), ("test", (TEST_EACH, TEST_EACH))):
        for (name, tint), n in zip((("common", 0.0), ("rare", 30.0)), sizes):
            d = root / split / name
            d.mkdir(parents=True)
            for k in range(n):
                # Each image's colour cast (per channel) is random and larger than the tint:
                # averaging the pixels cannot remove it.
                x = rng.normal(120, 10, size=(8, 8, 3)) + rng.normal(0, 25, size=3)
                x[..., 0] += tint
                Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(d / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    data = imbalanced_folder(tmp_path_factory.mktemp("imb") / "data")
    cfg = DataConfig(
        data=str(data), input_size=8, preset="small", num_workers=0, val_ratio=0.0, batch_size=32
    )
    return build_pipeline(cfg)


def _features(pipe, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean colour of each image, standardised: a linear probe learns from it in a blink."""
    pipe.loader(split, train=False)  # a held-out split is decoded when a loader first asks
    s = pipe.source.splits[split]
    x = s.images.float().mean(dim=(2, 3)) / 255.0
    return (x - 0.5) / 0.2, s.labels


def _probe(x, y, weight=None, batches=None, steps: int = 300) -> torch.nn.Linear:
    """A logistic regression, trained deterministically: full batch, or the given batches."""
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(steps):
        idx = batches[step % len(batches)] if batches else slice(None)
        loss = F.cross_entropy(model(x[idx]), y[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _balanced_accuracy(model, x, y) -> float:
    pred = model(x).argmax(1)
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (y.numpy(), pred.detach().numpy()), 1)
    return balanced_metrics(cm)["balanced_accuracy"]


def test_class_weights_auto_raises_balanced_accuracy(pipe):
    x, y = _features(pipe, "train")
    xt, yt = _features(pipe, "test")
    counts = list(pipe.source.class_counts("train").values())
    assert counts == [MAJOR, MINOR]
    plain = _balanced_accuracy(_probe(x, y), xt, yt)
    w = resolve_class_weights("auto", pipe.classes, counts)
    weighted = _balanced_accuracy(_probe(x, y, weight=w), xt, yt)
    # Unweighted, the probe mostly answers "common"; weighted, both classes are found.
    assert plain < 0.7 and weighted > plain + 0.1, (plain, weighted)
    eff = resolve_class_weights("effective:0.999", pipe.classes, counts)
    assert _balanced_accuracy(_probe(x, y, weight=eff), xt, yt) > plain + 0.05


def test_balanced_sampler_raises_balanced_accuracy(pipe):
    x, y = _features(pipe, "train")
    xt, yt = _features(pipe, "test")
    sampler = make_sampler("balanced", y, 32, drop_last=True, seed=0)
    batches = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches += list(sampler)
    drawn = y[torch.tensor([i for b in batches for i in b])]
    assert 0.4 < float(drawn.float().mean()) < 0.6  # rare drawn as often as common
    plain = _balanced_accuracy(_probe(x, y), xt, yt)
    assert _balanced_accuracy(_probe(x, y, batches=batches), xt, yt) > plain + 0.1


def test_weights_inverse_frequency_and_effective_number():
    w = class_weights([100, 10], "auto")
    assert w.tolist() == pytest.approx([110 / 200, 110 / 20])  # N / (K n_c)
    assert float((w * torch.tensor([100.0, 10.0])).sum()) == pytest.approx(110)  # mean 1
    e = class_weights([100, 10], "effective", beta=0.9)
    # β^100 ≈ 0: the big class counts as 1 / (1 - β) = 10 samples, the small as 6.5
    ratio = float(e[1] / e[0])
    assert ratio == pytest.approx(10 / ((1 - 0.9**10) / 0.1), rel=1e-4)
    assert 1 < ratio < 10  # between none and inverse frequency
    assert class_weights([5, 0, 5], "auto")[1] == 0  # never a target
    assert class_weights([3, 4], "none") is None
    with pytest.raises(ConfigError, match="unknown"):
        class_weights([0, 0], "auto")
    with pytest.raises(ConfigError, match="not one of"):
        class_weights([3, 4], "square")
    with pytest.raises(ConfigError, match="BETA"):
        resolve_class_weights("effective:1.5", ["a", "b"], [3, 4])


def test_weights_from_a_file(tmp_path):
    f = tmp_path / "w.json"
    f.write_text(json.dumps({"b": 2.0, "a": 0.5}))
    assert resolve_class_weights(str(f), ["a", "b"], [1, 1]).tolist() == [0.5, 2.0]
    y = tmp_path / "w.yaml"
    y.write_text("- 1\n- 3\n")
    assert resolve_class_weights(str(y), ["a", "b"], [1, 1]).tolist() == [1.0, 3.0]
    f.write_text(json.dumps({"a": 1}))
    with pytest.raises(ConfigError, match="no weight for b"):
        resolve_class_weights(str(f), ["a", "b"], [1, 1])
    f.write_text(json.dumps({"a": 1, "b": -1}))
    with pytest.raises(ConfigError, match=">= 0"):
        resolve_class_weights(str(f), ["a", "b"], [1, 1])
    with pytest.raises(ConfigError, match="nor an existing"):
        resolve_class_weights(str(tmp_path / "missing.json"), ["a", "b"], [1, 1])


def test_balanced_sampler_is_seeded_resumable_and_sharded():
    labels = torch.tensor([0] * 90 + [1] * 10)
    a = BalancedSampler(labels, 10, drop_last=False, seed=3)
    a.set_epoch(2)
    full = list(a)
    a.set_epoch(2, start_batch=4)
    assert list(a) == full[4:]  # a resumed epoch sees the same remaining batches
    a.set_epoch(3)
    assert list(a) != full
    ranks = [BalancedSampler(labels, 10, False, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    shards = [i for r in ranks for b in r for i in b]
    assert sorted(shards) == sorted(i for b in full for i in b)  # one draw, split between ranks
    with pytest.raises(DataError, match="sampler"):
        make_sampler("oversample", labels, 10, False)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_and_macro_f1_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    y[y == 3] = 0  # a class that never occurs, but is predicted
    p = rng.integers(0, 4, 200)
    cm = np.zeros((4, 4), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    m = balanced_metrics(cm)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))


def test_stats_names_the_imbalance_and_the_options(pipe):
    source = load_source(pipe.cfg.data, val_ratio=0.0)
    report = dataset_stats(source)
    assert report["imbalance"] == pytest.approx((MAJOR + TEST_EACH) / (MINOR + TEST_EACH))
    text = format_report(report)  # 260:80 = 3.25:1 over all splits: above 3:1
    assert "warning   imbalanced classes: largest/smallest = 3.2:1" in text
    assert "--class-weights auto" in text and "--sampler balanced" in text
    train_only = imbalance_note(source.class_counts("train"))
    assert "10.0:1" in train_only and "--class-weights auto" in train_only
    assert "--sampler balanced" in train_only and "common 200 vs rare 20" in train_only
    assert imbalance_note({"a": 30, "b": 10}) is None  # 3:1 is not above 3:1
