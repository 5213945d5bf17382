"""A model with fewer classes than the page's topk (2 < 5), from the API to the web page."""

import os
import shutil

import pytest
from PIL import Image

from datagen import make_folder
from resnetlab.train import Trainer, resolve_config
from test_serve import Server, _multipart, _png


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    data = make_folder(root / "data", {"cat": 8, "dog": 8}, size=(36, 36))
    cfg = resolve_config(
        dict(
            data=str(data),
            model="resnet20",
            model_kwargs={"widths": [4, 8, 8]},
            input_size=32,
            epochs=1,
            batch_size=8,
            out=str(root / "runs"),
            name="two",
            num_workers=0,
            val_ratio=0.25,
            test_ratio=0.25,
        )
    )
    Trainer(cfg, verbose=False).fit()
    s = Server(root / "runs" / "two", "--backend", "torch")  # the page, not the choice
    yield s
    s.stop()


@pytest.mark.parametrize("query", ["", "?topk=5", "?topk=2"])
def test_two_classes_answer_with_both(server, query):
    body, headers = _multipart(_png(90))
    status, r, _ = server.request("POST", f"/predict{query}", body, headers)
    assert status == 200 and sorted(t["label"] for t in r["topk"]) == ["cat", "dog"]
    assert abs(sum(t["prob"] for t in r["topk"]) - 1) < 1e-4


def test_page_shows_two_bars(server, tmp_path):
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import chrome_driver

    img = tmp_path / "pet.png"
    Image.new("RGB", (64, 64), (200, 120, 40)).save(img)
    shot = os.environ.get("RESNETLAB_SCREENSHOT", str(tmp_path / "serve_2class.png"))
    with chrome_driver(900, 700) as d:
        d.get(f"http://127.0.0.1:{server.port}/")
        WebDriverWait(d, 20).until(lambda d: "2 classes" in d.find_element(By.ID, "info").text)
        d.find_element(By.ID, "file").send_keys(str(img))
        # Two bars or the red error box, whichever comes: waiting for bars alone would only
        # time out when the server refuses the request.
        WebDriverWait(d, 20).until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, ".bar")
                or d.find_element(By.ID, "error").is_displayed()
            )
        )
        assert not d.find_element(By.ID, "error").is_displayed(), d.find_element(
            By.ID, "error"
        ).text
        bars = d.find_elements(By.CSS_SELECTOR, ".bar")
        labels = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".bar .label span:first-child")]
        assert len(bars) == 2 and sorted(labels) == ["cat", "dog"]
        widths = [e.size["width"] for e in d.find_elements(By.CSS_SELECTOR, ".bar .fill")]
        assert widths[0] >= widths[1] > 0  # most probable first, both drawn
        assert d.find_element(By.ID, "preview").is_displayed()
        assert [e for e in d.get_log("browser") if e["level"] == "SEVERE"] == []
        d.save_screenshot(shot)
    assert os.path.getsize(shot) > 5000
