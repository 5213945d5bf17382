"""Plots and the report page with Chinese class names: real glyphs, readable layout, one unit."""

import logging
import os
import re
import shutil
import warnings

import numpy as np
import pytest

from datagen import make_folder
from resnetlab.core import plots
from resnetlab.train import Trainer, resolve_config

# Reports are made here from fresh runs: --backend auto measures PyTorch alone (conftest).
pytestmark = pytest.mark.usefixtures("auto_backend_measures_torch")

# The herbal-medicine users' names: Latin and Chinese mixed, long enough to wrap.
CLASSES = ["Radix Astragali 黄芪", "枸杞子 (wolfberry)", "当归"]


def _need_cjk_font():
    if plots.cjk_fonts():
        return
    if os.environ.get("CI"):
        pytest.fail("no CJK font; `make test` installs fonts-noto-cjk with apt-get")
    pytest.skip("no CJK font installed (make test installs fonts-noto-cjk)")


def _draw_all(tmp_path, classes=CLASSES, title="resnet20 · 中药 12 类"):
    rng = np.random.default_rng(0)
    cm = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 4]])
    plots.plot_confusion(cm, classes, tmp_path / "cm.png")
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    items = [
        {"true": classes[i % 3], "pred": classes[(i + 1) % 3], "prob": 0.9 - 0.1 * i}
        for i in range(6)
    ]
    plots.plot_top_losses(images, items, tmp_path / "top.png")
    history = [
        {
            "epoch": e,
            "lr": 0.1 / e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_top1": 0.3 * e,
            "val_top1": 0.25 * e,
        }
        for e in (1, 2, 3)
    ]
    plots.plot_curves(history, tmp_path / "curves.png", title)


def test_chinese_class_names_draw_without_missing_glyphs(tmp_path):
    _need_cjk_font()
    # Matplotlib warns once per character it draws as a box; any such warning fails here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _draw_all(tmp_path)
    family = plots.font_families()
    # Latin text keeps matplotlib's default font; the CJK font only fills in what it lacks.
    assert family[0] == "DejaVu Sans" and len(family) > 1
    for name in ("cm.png", "top.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 5_000


def test_without_a_cjk_font_one_hint_names_the_package(tmp_path, monkeypatch, caplog):
    # A user's machine without any CJK font: simulated by the font finder finding none.
    monkeypatch.setattr(plots, "cjk_fonts", lambda: ())
    monkeypatch.setattr(plots, "_hinted", False)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Glyph … missing" warning per character
        _draw_all(tmp_path)
        _draw_all(tmp_path)
    hints = [r.getMessage() for r in caplog.records if "CJK" in r.getMessage()]
    assert len(hints) == 1, hints
    assert "fonts-noto-cjk" in hints[0]


def test_latin_names_without_a_cjk_font_give_no_hint(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(plots, "cjk_fonts", lambda: ())
    monkeypatch.setattr(plots, "_hinted", False)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _draw_all(tmp_path, ["cat", "dog", "bee"], "resnet20")
    assert not [r for r in caplog.records if "CJK" in r.getMessage()]


def test_top_loss_titles_stay_clear_of_the_row_above():
    plt = plots._plt()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
    items = [{"true": CLASSES[i % 3], "pred": CLASSES[(i + 1) % 3], "prob": 0.5} for i in range(8)]
    fig = plots.top_losses_figure(images, items)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    cols = 4
    try:
        for k in range(cols, len(axes)):
            above = axes[k - cols].get_window_extent(renderer)
            title = axes[k].title.get_window_extent(renderer)
            assert title.y1 <= above.y0, f"title of panel {k} overlaps the panel above"
            left = axes[k].get_window_extent(renderer)
            # Captions stay within their column (long names wrap instead of running over).
            assert title.width <= left.width * 1.15, f"title of panel {k} runs into the next"
    finally:
        plt.close(fig)


def test_curves_label_whole_epochs_only():
    plt = plots._plt()
    history = [
        {
            "epoch": e,
            "lr": 0.1,
            "train_loss": 1.0,
            "val_loss": 1.0,
            "train_top1": 0.5,
            "val_top1": 0.5,
        }
        for e in (1, 2)
    ]
    fig = plots.curves_figure(history)
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from resnetlab.analysis.report import build_report

    root = tmp_path_factory.mktemp("zh")
    data = make_folder(root / "data", {c: 8 for c in CLASSES}, size=(36, 36))
    cfg = resolve_config(
        dict(
            data=str(data),
            model="resnet20",
            model_kwargs={"widths": [4, 8, 8]},
            input_size=32,
            epochs=2,
            batch_size=8,
            out=str(root / "runs"),
            name="zh",
            num_workers=0,
            val_ratio=0.25,
            test_ratio=0.25,
        )
    )
    Trainer(cfg, verbose=False).fit()
    return build_report(root / "runs" / "zh")


def test_report_tables_show_percentages_like_the_cards(report):
    page = report.read_text(encoding="utf-8")
    per_class = re.search(r'<section id="per-class">(.*?)</section>', page, re.S).group(1)
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>", per_class)
    assert len(rows) == len(CLASSES)
    for _name, precision, recall, f1 in rows:
        for cell in (precision, recall, f1):
            assert re.fullmatch(r"\d{1,3}\.\d%", cell), cell
    curves = re.search(r'<section id="curves">(.*?)</section>', page, re.S).group(1)
    cells = re.findall(r"<tr>((?:<td>.*?</td>)+)</tr>", curves)
    assert len(cells) == 2  # one row per epoch
    for row in cells:
        values = re.findall(r"<td>(.*?)</td>", row)
        train_top1, val_top1 = values[3], values[5]
        assert re.fullmatch(r"\d{1,3}\.\d%", train_top1) and re.fullmatch(r"\d{1,3}\.\d%", val_top1)
    cards = re.findall(r'<div class="card">[^<]*top-1<b>(.*?)</b>', page)
    assert cards and all(re.fullmatch(r"\d{1,3}\.\d%", c) for c in cards), cards


def test_report_page_draws_chinese_with_a_cjk_font_in_chromium(report):
    _need_cjk_font()
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")
    from browser import chrome_driver

    with chrome_driver() as driver:
        driver.get(report.as_uri())
        # Chromium reports which installed fonts drew a node's text: the Chinese class name
        # must come from a Simplified Chinese face, not a box or a Japanese fallback.
        driver.execute_cdp_cmd("DOM.enable", {})
        driver.execute_cdp_cmd("CSS.enable", {})
        root = driver.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        nodes = driver.execute_cdp_cmd(
            "DOM.querySelectorAll", {"nodeId": root, "selector": "#per-class td:first-child"}
        )["nodeIds"]
        used = {}
        for node in nodes:
            fonts = driver.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node})
            for f in fonts["fonts"]:
                used[f["familyName"]] = used.get(f["familyName"], 0) + f["glyphCount"]
    chinese = sum(len(re.findall(r"[\u4e00-\u9fff]", c)) for c in CLASSES)
    assert used.get("Noto Sans CJK SC", 0) >= chinese, used
