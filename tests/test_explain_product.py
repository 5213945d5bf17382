"""Explanations and calibration where users meet them: POST /explain over real HTTP, the serve
page's "where the model looked" in headless Chromium, and the report's Calibration section
and Grad-CAM gallery (screenshots under pytest's basetemp, to be looked at)."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import DataConfig, build_pipeline
from resnetlab.inference.loading import load_model
from resnetlab.train.calibration import calibrate_run
from test_calibration_run import tiny_run
from test_serve import Server, _multipart

pytest.importorskip("captum")
# Reports are made here from fresh runs: --backend auto measures PyTorch alone (conftest).
pytestmark = pytest.mark.usefixtures("auto_backend_measures_torch")

# Names a header cannot carry as they are: X-Class is URL-quoted.
CLASSES = ["红花", "white rose", "straße"]
DATA = dict(input_size=32, preset="small")
PER_CLASS = 40


def noisy_folder(root: Path, seed: int = 0) -> Path:
    """DIR/<class>/*.png: grey noise with a faint tint of the class's colour (red, green,
    blue), so a briefly trained net is right often and wrong sometimes: top losses exist."""
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            x = rng.normal(110, 45, size=(32, 32, 3))
            x[..., ci] += 8
            Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(root / name / f"{k}.png")
    return root


@pytest.fixture(scope="module", autouse=True)
def _calibrate_small_validation_splits():
    """The runs here have a few dozen validation images, and what these tests check needs a
    fitted temperature: the minimum a fit takes (``MIN_CALIBRATION_IMAGES``, which keeps a real
    run from a temperature fitted on a handful of images) is lowered for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("resnetlab.train.calibration.MIN_CALIBRATION_IMAGES", 1)
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("explain")
    data = noisy_folder(root / "flowers")
    run = tiny_run(root / "run", steps=30, scale=4.0, data=str(data), **DATA)
    loaded = load_model(run.path)
    pipe = build_pipeline(DataConfig(data=str(data), num_workers=0, **DATA))
    calibrate_run(loaded.model, pipe, "cpu", "fp32", run, loaded.meta)
    return run


@pytest.fixture(scope="module")
def server(run):
    s = Server(run, "--backend", "torch", "--workers", "1")
    yield s
    s.stop()


def _image(tmp_path, name="flower.png") -> bytes:
    """A green 32x32 square (the tint of the second class), written and read back."""
    img = Image.new("RGB", (32, 32), (40, 200, 40))
    path = tmp_path / name
    img.save(path)
    return path.read_bytes()


def _post_bytes(server, path: str, body: bytes, headers: dict) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_explain_endpoint_returns_an_overlay_with_its_class(server, run, tmp_path):
    body, headers = _multipart(_image(tmp_path))
    status, png, h = _post_bytes(server, "/explain", body, headers)
    assert status == 200 and h["content-type"] == "image/png", png[:200]
    shown = Image.open(io.BytesIO(png))
    assert shown.format == "PNG" and min(shown.size) >= 224  # scaled up so the heat shows
    label = urllib.parse.unquote(h["x-class"])
    assert label in CLASSES and h["x-class"].isascii()
    assert sorted(CLASSES)[int(h["x-class-index"])] == label
    assert 0 < float(h["x-prob"]) <= 1
    # The probability is the calibrated one /predict gives for that class.
    _, pred, _ = server.request("POST", "/predict?topk=3", body, headers)
    probs = {t["label"]: t["prob"] for t in pred["topk"]}
    assert float(h["x-prob"]) == pytest.approx(probs[label], abs=1e-4)


def test_explain_a_named_class_and_refuse_an_unknown_one(server, tmp_path):
    body, headers = _multipart(_image(tmp_path))
    wanted = "红花"
    status, _, h = _post_bytes(
        server, "/explain?class=" + urllib.parse.quote(wanted), body, headers
    )
    assert status == 200 and urllib.parse.unquote(h["x-class"]) == wanted
    status, err, _ = server.request("POST", "/explain?class=tulip", body, headers)
    assert status == 400 and "tulip" in err["error"] and "红花" in err["error"]
    status, err, _ = server.request("POST", "/explain", b"not an image", {})
    assert status == 400 and "cannot decode" in err["error"]


def test_model_info_and_predictions_carry_the_temperature(server, run, tmp_path):
    from resnetlab.inference.predict import Predictor

    t = run.read_meta().temperature
    assert t is not None
    assert server.request("GET", "/model")[1]["temperature"] == pytest.approx(t)
    data = _image(tmp_path)
    body, headers = _multipart(data)
    _, pred, _ = server.request("POST", "/predict?topk=3", body, headers)
    local = Predictor(run.path, backend="torch", device="cpu", precision="fp32")
    img = Image.open(tmp_path / "flower.png").convert("RGB")
    want = local.predict_images([img], topk=3)[0]
    assert [r["label"] for r in pred["topk"]] == [r["label"] for r in want]
    for got, exp in zip(pred["topk"], want):
        assert got["prob"] == pytest.approx(exp["prob"], abs=1e-4)


def _chromium():
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")
    from browser import chrome_driver

    return chrome_driver


def test_page_shows_where_the_model_looked(server, tmp_path):
    chrome_driver = _chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _image(tmp_path)
    with chrome_driver(900, 760) as d:
        d.get(f"http://127.0.0.1:{server.port}/")
        WebDriverWait(d, 20).until(lambda d: "classes" in d.find_element(By.ID, "info").text)
        d.find_element(By.ID, "explain").click()
        d.find_element(By.ID, "file").send_keys(str(tmp_path / "flower.png"))
        WebDriverWait(d, 60).until(
            lambda d: d.execute_script(
                "const h = document.getElementById('heat');"
                "return h.complete && h.naturalWidth > 0 && h.offsetParent !== null;"
            )
        )
        caption = d.find_element(By.ID, "heat-caption").text
        assert any(name in caption for name in CLASSES), caption
        assert d.execute_script("return document.getElementById('heat').naturalWidth") >= 224
        d.save_screenshot(str(tmp_path / "page-explain.png"))
        # Unticked: the heat map goes away.
        d.find_element(By.ID, "explain").click()
        assert not d.find_element(By.ID, "heat").is_displayed()
        severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    assert (tmp_path / "page-explain.png").stat().st_size > 5000


def test_report_has_calibration_and_gradcam_gallery(run, tmp_path):
    from resnetlab.analysis.report import build_report

    page = build_report(run.path, top_losses=6).read_text(encoding="utf-8")
    assert '<section id="calibration">' in page and "reliability diagram" in page
    assert "ECE before" in page and "ECE after" in page and "temperature" in page
    assert "balanced accuracy" in page and "macro-F1" in page
    assert (run.report_files / "reliability.png").is_file()
    ev = json.loads((run.report_files / "metrics.json").read_text(encoding="utf-8"))
    assert ev["top_losses"], "the test's data should leave the model some mistakes"
    assert "Where the model looked" in page
    assert (run.report_files / "top_losses_gradcam.png").is_file()
    assert run.read_meta().temperature != 1.0  # mistakes on val: a temperature was fitted
    chrome_driver = _chromium()
    with chrome_driver(1200, 4000) as d:
        d.get(run.report.as_uri() + "#calibration")
        d.save_screenshot(str(tmp_path / "report.png"))
        broken = d.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth)).length"
        )
        assert broken == 0
