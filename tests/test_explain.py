"""Grad-CAM: the heat lies on what decides the class, in a synthetic task made for it.

Each 32x32 image is grey noise with two 8x8 squares in two different quadrants: a coloured
one whose colour (red, green, blue) is the class, and an equally bright white one that says
nothing. A tiny CIFAR-family net learns the colours in a second; its explanation must put most
of the heat in the coloured square's quadrant, not on the white square or the noise.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from resnetlab.analysis.explain import (
    Explainer,
    explain,
    explain_files,
    output_paths,
    overlay,
    target_layer,
)
from resnetlab.core.errors import ConfigError
from resnetlab.models import CifarResNet, create_model

pytest.importorskip("captum")

CLASSES = ["red", "green", "blue"]
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0]])
SIDE, SQUARE = 32, 8
MEAN, STD = [0.5] * 3, [0.25] * 3


def _quadrant(q: int) -> tuple[slice, slice]:
    half = SIDE // 2
    top, left = half * (q // 2), half * (q % 2)
    return slice(top, top + half), slice(left, left + half)


def make_images(n: int, g: torch.Generator, two_classes: bool = False) -> tuple[torch.Tensor, ...]:
    """uint8 images (n, 3, 32, 32), their classes, the quadrant of the coloured square, and
    the class (-1: white) and quadrant of the second square.

    ``two_classes``: the second square has another class's colour instead of white (never
    seen in training; both classes are then in the picture)."""
    x = (torch.rand(n, 1, SIDE, SIDE, generator=g) * 0.5).expand(n, 3, SIDE, SIDE).clone()
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    quad = torch.randint(0, 4, (n,), generator=g)
    quad2 = (quad + torch.randint(1, 4, (n,), generator=g)) % 4  # any other quadrant
    offsets = torch.randint(0, SIDE // 2 - SQUARE + 1, (n, 4), generator=g)
    y2 = torch.full((n,), -1)
    if two_classes:
        y2 = (y + torch.randint(1, len(CLASSES), (n,), generator=g)) % len(CLASSES)
    for i in range(n):
        second = COLOURS[y2[i]] if y2[i] >= 0 else torch.ones(3)
        for q, colour, (dy, dx) in (
            (quad[i], COLOURS[y[i]], offsets[i, :2]),
            (quad2[i], second, offsets[i, 2:]),
        ):
            rows, cols = _quadrant(int(q))
            top, left = rows.start + int(dy), cols.start + int(dx)
            x[i, :, top : top + SQUARE, left : left + SQUARE] = colour[:, None, None]
    return (x * 255).round().to(torch.uint8), y, quad, y2, quad2


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These nets are tiny: a second intra-op thread only waits on a busy shared CPU (50 s
    instead of 3 s to train when other processes hold the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread) -> CifarResNet:
    """A 6n+2 net with n = 1 and narrow stages, trained on 100 batches of 32 (about 2 s)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = CifarResNet(depth=8, num_classes=len(CLASSES), widths=(8, 16, 16))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        x, y, *_ = make_images(32, g)
        loss = F.cross_entropy(model(normalise(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _mass(heat: torch.Tensor, q: int) -> float:
    rows, cols = _quadrant(q)
    return float(heat[rows, cols].sum() / heat.sum())


def test_heat_lies_on_the_square_that_decides_the_class(trained):
    x, y, quad, _, white = make_images(12, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (trained(normalise(x)).argmax(1) == y).all()  # the task is learnt
    heat = explain(trained, normalise(x))
    assert heat.shape == (12, SIDE, SIDE)
    assert heat.min() >= 0 and torch.allclose(heat.flatten(1).amax(1), torch.ones(12))
    masses = [_mass(h, int(q)) for h, q in zip(heat, quad)]
    # A quarter of the image would hold a quarter of uniform heat; the white square as bright
    # as the coloured one must not draw it.
    assert min(masses) > 0.5, masses
    assert np.mean(masses) > 0.7, masses
    assert max(_mass(h, int(q)) for h, q in zip(heat, white)) < 0.25


def test_heat_follows_the_class_asked_for(trained):
    # Red and blue in one picture: each class's explanation lies on its own square, which
    # no class-blind map (activations, saliency of the image alone) can do for both.
    x, y, quad, y2, quad2 = make_images(12, torch.Generator().manual_seed(5), two_classes=True)
    for classes, quadrants in ((y, quad), (y2, quad2)):
        heat = explain(trained, normalise(x), classes)
        masses = [_mass(h, int(q)) for h, q in zip(heat, quadrants)]
        assert min(masses) > 0.5, masses


def test_explainer_names_classes_and_runs_under_inference_mode(trained):
    ex = Explainer(trained, CLASSES, SIDE, MEAN, STD, preset="cifar")
    x, y, quad, *_ = make_images(3, torch.Generator().manual_seed(2))
    with torch.inference_mode():  # as serve and predict run: Grad-CAM still gets gradients
        found = ex.explain_batch(x)
    assert [e.label for e in found] == [CLASSES[i] for i in y]
    assert all(0.5 < e.prob <= 1 for e in found)
    assert all(_mass(e.heatmap, int(q)) > 0.5 for e, q in zip(found, quad))
    named = ex.explain_image(x[0], class_name="blue")
    assert (named.index, named.label) == (2, "blue")
    with pytest.raises(ConfigError, match="'purple'.*red, green, blue"):
        ex.class_index("purple")
    assert not trained.training


def _loaded(model) -> SimpleNamespace:
    """What bundle.load_model returns, as far as explain reads it."""
    meta = SimpleNamespace(
        classes=CLASSES, size=SIDE, mean=MEAN, std=STD, preset="cifar", in_chans=3, temperature=None
    )
    return SimpleNamespace(model=model, meta=meta)


def test_explain_files_writes_one_overlay_per_image(trained, tmp_path):
    x, y, *_ = make_images(3, torch.Generator().manual_seed(3))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [tmp_path / "a" / "one.png", tmp_path / "a" / "two.png", tmp_path / "b" / "one.png"]
    for p, img in zip(paths, x):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(p)
    broken = tmp_path / "a" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    rows = explain_files(_loaded(trained), [*paths, broken], out)
    assert [r["path"] for r in rows] == [str(p) for p in [*paths, broken]]
    assert [r["class"] for r in rows[:3]] == [CLASSES[i] for i in y]
    assert rows[3]["error"] and rows[3]["out"] is None
    names = [r["out"] and r["out"].rsplit("/", 1)[-1] for r in rows]
    # "one.png" in two folders (as in ImageFolder class folders): the folder tells them apart
    assert names == ["a_one.gradcam.png", "two.gradcam.png", "b_one.gradcam.png", None]
    with Image.open(rows[0]["out"]) as im:
        assert im.size == (224, 224) and im.mode == "RGB"  # 32 px scaled up 7 times
    again = explain_files(_loaded(trained), paths[:1], out, class_name="green")
    assert again[0]["class"] == "green" and again[0]["out"].endswith("/one.gradcam-green.png")
    with pytest.raises(ConfigError, match="red, green, blue"):
        explain_files(_loaded(trained), paths, out, class_name="Green")


def test_an_input_image_is_never_overwritten(tmp_path):
    earlier = tmp_path / "cat.gradcam.png"  # an overlay of an earlier call, explained in turn
    cat = tmp_path / "cat.png"
    assert output_paths([cat, earlier], tmp_path) == [
        tmp_path / "cat.gradcam-2.png",
        tmp_path / "cat.gradcam.gradcam.png",
    ]
    same = [tmp_path / "x" / "cat.png", tmp_path / "x" / "cat.jpg"]  # one folder, one stem
    assert output_paths(same, tmp_path, "a/b") == [
        tmp_path / "x_cat.gradcam-a_b.png",
        tmp_path / "x_cat.gradcam-a_b-2.png",
    ]


def test_the_pooled_map_of_every_family_and_frozen_weights():
    cifar = create_model("resnet20", num_classes=4)
    imagenet = create_model("resnet18", num_classes=4).eval()
    preact = create_model("preact_resnet20", num_classes=4).eval()
    # The pool's input: layer3's output (CIFAR), layer4's (ImageNet), and in a pre-activation
    # net that output after the final BN-ReLU, which the last stage's output is not.
    for model in (cifar, imagenet, preact):
        assert target_layer(model) == (model.avgpool, True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(explain(imagenet, x, 1), explain(imagenet, x, 1, layer=imagenet.layer4))
    assert explain(preact, x, 1).shape == (2, 64, 64)
    imagenet.eval().requires_grad_(False)  # a feature-extraction model: no parameter has grad
    imagenet.train()
    heat = explain(imagenet, torch.randn(2, 3, 64, 64), target=3)
    assert heat.shape == (2, 64, 64) and heat.min() >= 0 and heat.max() <= 1
    assert imagenet.training  # the caller's mode is given back
    with pytest.raises(ConfigError, match="out of range"):
        explain(imagenet, torch.randn(1, 3, 32, 32), target=4)


def test_overlay_blends_heat_over_grey_and_single_channel_images():
    grey = np.full((8, 8), 100, np.uint8)  # digits-like: one channel, 8 px
    heat = np.zeros((8, 8), np.float32)
    heat[:4] = 1.0
    im = np.asarray(overlay(grey, heat, min_side=16))
    assert im.shape == (16, 16, 3)
    hot, cold = im[0, 0].astype(int), im[-1, -1].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # turbo: red where hot, blue where cold
    with pytest.raises(ConfigError, match="differ in size"):
        overlay(grey, np.zeros((4, 4)))
