"""Ants vs bees: 2 classes in train/ and val/; feature extraction from a torchvision .pth,
then fine-tuning from that run's weights; served, and a photo uploaded on the web page."""

import json
import os
import shutil
import socket

import pytest
import torch
import torchvision
from PIL import Image

from conftest import noisy

COLOURS = {"ants": (150, 70, 40), "bees": (230, 200, 40)}


def _make(root):
    for split, n in (("train", 16), ("val", 6)):
        for ci, (name, colour) in enumerate(COLOURS.items()):
            d = root / split / name
            d.mkdir(parents=True)
            for k in range(n):
                arr = noisy(colour, size=(48, 40), seed=1000 * ci + 10 * k + len(split))
                Image.fromarray(arr).save(d / f"{name}_{k}.jpg", quality=92)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ants_vs_bees_journey(cli, tmp_path):
    data = tmp_path / "hymenoptera_data"
    _make(data)
    pth = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)
    common = [
        "--data",
        data,
        "--model",
        "resnet18",
        "--input-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
    ]

    p = cli("train", *common, "--weights", pth, "--mode", "feature-extract", "--name", "fe")
    said = p.stdout + p.stderr
    assert "2 classes, train 32, val 12" in said
    fe = tmp_path / "runs" / "fe"
    before = torch.load(pth, weights_only=True)
    after = torch.load(fe / "checkpoint-last.pt", weights_only=True)["model"]
    # Feature extraction: the backbone is the .pth's, untouched; only the head learned.
    assert torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])

    weights = fe / "model.safetensors"
    cli("train", *common, "--weights", weights, "--mode", "finetune", "--name", "ft")
    ft = tmp_path / "runs" / "ft"
    summary = json.loads((ft / "summary.json").read_text(encoding="utf-8"))
    assert summary["classes"] == ["ants", "bees"] and summary["best_val_top1"] is not None

    # predict with the default --topk 5 on a 2-class model: both classes, no error.
    photo = data / "val" / "bees" / "bees_0.jpg"
    rows = json.loads(cli("predict", ft, photo, "--json").stdout)
    assert [t["label"] for t in rows[0]["topk"]] in (["ants", "bees"], ["bees", "ants"])

    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import chrome_driver

    port = _free_port()
    # predict measured --backend auto above; serve (fp32) would measure it again at start-up,
    # which is not what the page is checked for.
    server = cli.popen("serve", ft, "--port", port, "--backend", "torch")
    try:
        assert f"http://127.0.0.1:{port}/" in server.stdout.readline()
        with chrome_driver(900, 700) as d:
            d.get(f"http://127.0.0.1:{port}/")
            WebDriverWait(d, 30).until(lambda d: "classes" in d.find_element(By.ID, "info").text)
            d.find_element(By.ID, "file").send_keys(str(photo))
            WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".bar"))
            bars = d.find_elements(By.CSS_SELECTOR, ".bar")
            labels = {
                e.text for e in d.find_elements(By.CSS_SELECTOR, ".bar .label span:first-child")
            }
            assert len(bars) == 2 and labels == {"ants", "bees"}
            assert not d.find_element(By.ID, "error").is_displayed()
            severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
            assert severe == []
            d.save_screenshot(str(tmp_path / "page.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)
