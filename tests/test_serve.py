"""The real server over real HTTP: endpoints, hardening, micro-batching, the web page."""

import concurrent.futures as cf
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from resnetlab.train import Trainer, resolve_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    cfg = resolve_config(dict(model="resnet20", model_kwargs={"widths": [4, 8, 8]}, epochs=1,
                              out=str(root), name="digits", num_workers=0))  # fmt: skip
    Trainer(cfg, verbose=False).fit()
    return root / "digits"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run, *extra):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "resnetlab", "serve", str(run), "--port", str(self.port),
               *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = self.proc.stdout.readline()
        # The URL is printed only once the port accepts connections.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
            self.listening_at_banner = True
        except OSError:
            self.listening_at_banner = False
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start: " + self.proc.stderr.read())

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            ctype = r.getheader("content-type", "")
            payload = json.loads(data) if "json" in ctype else data.decode("utf-8", "replace")
            return r.status, payload, dict(r.getheaders())
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def server(run):
    s = Server(run)
    yield s
    s.stop()


def _png(value=128, size=(24, 24), mode="L") -> bytes:
    buf = io.BytesIO()
    img = Image.new(mode, size, value)
    img.putpixel((3, 3), 255 - value if mode == "L" else (0, 0, 0))
    img.save(buf, "PNG")
    return buf.getvalue()


def _multipart(data: bytes, name="x.png", ctype="image/png"):
    boundary = "resnetlab-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_banner_binds_loopback_by_default(server):
    assert f"http://127.0.0.1:{server.port}/" in server.banner
    assert server.listening_at_banner


def test_health_model_and_page(server):
    assert server.request("GET", "/health")[1]["status"] == "ok"
    status, info, _ = server.request("GET", "/model")
    assert status == 200 and info["classes"] == [str(i) for i in range(10)]
    assert info["input_size"] == [1, 32, 32] and info["backend"] in ("torch", "onnx", "openvino")
    status, page, _ = server.request("GET", "/")
    assert status == 200 and "Drop an image" in page


def test_predict_multipart_and_raw(server):
    body, headers = _multipart(_png())
    status, r, _ = server.request("POST", "/predict?topk=3", body, headers)
    assert status == 200 and len(r["topk"]) == 3 and r["model"] == "resnet20"
    assert {"label", "index", "prob"} <= set(r["topk"][0])
    status, raw, _ = server.request(
        "POST", "/predict?topk=3", _png(), {"Content-Type": "image/png"}
    )
    assert status == 200
    assert [t["index"] for t in raw["topk"]] == [t["index"] for t in r["topk"]]
    assert abs(raw["topk"][0]["prob"] - r["topk"][0]["prob"]) < 1e-5


@pytest.mark.parametrize(
    "body, ctype, status",
    [
        (b"%PDF-1.4\n1 0 obj <<>> endobj", "application/pdf", 415),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "image/svg+xml", 415),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "application/octet-stream", 415),
        (b"\x89PNG\r\n\x1a\n garbage", "image/png", 400),
        (b"just some bytes", "application/octet-stream", 400),
        (b"", "image/png", 400),
    ],
)
def test_bad_uploads_then_good_request_still_works(server, body, ctype, status):
    got, r, _ = server.request("POST", "/predict", body, {"Content-Type": ctype})
    assert got == status and r["error"]
    assert server.request("POST", "/predict", _png(), {"Content-Type": "image/png"})[0] == 200


def test_body_cap_with_length_and_chunked(server):
    big = b"\0" * (11 * 2**20)
    status, r, _ = server.request("POST", "/predict", big, {"Content-Type": "image/png"})
    assert status == 413 and "limit" in r["error"]

    def chunks():
        for _ in range(12):
            yield b"\0" * 2**20

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/predict", body=chunks(), encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked", "Content-Type": "image/png"})  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()
    assert server.request("POST", "/predict", _png(), {"Content-Type": "image/png"})[0] == 200


def test_pixel_bomb_refused(server):
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # 81 Mpixel in a few kB
    status, r, _ = server.request("POST", "/predict", buf.getvalue(), {"Content-Type": "image/png"})
    assert status == 413 and "pixels" in r["error"]


def test_topk_above_the_classes_gives_all_and_below_one_is_refused(server):
    status, r, _ = server.request("POST", "/predict?topk=11", _png(), {"Content-Type": "image/png"})
    assert status == 200 and sorted(t["index"] for t in r["topk"]) == list(range(10))
    assert abs(sum(t["prob"] for t in r["topk"]) - 1) < 1e-4
    for topk in ("0", "-3"):
        status, r, _ = server.request(
            "POST", f"/predict?topk={topk}", _png(), {"Content-Type": "image/png"}
        )
        assert status == 400 and f"topk must be at least 1, got {topk}" in r["error"]


def test_413_reaches_a_client_that_sends_the_whole_body_first(server):
    """urllib (like requests) writes the whole body before it reads the answer; the server
    reads and drops the rest of a refused body so that such a client sees the 413 instead of
    a connection reset."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/predict", data=b"\0" * (24 * 10**6),
        headers={"Content-Type": "image/png"}, method="POST",
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=60)
    assert caught.value.code == 413
    assert "24,000,000 bytes exceeds" in json.loads(caught.value.read())["error"]
    assert server.request("POST", "/predict", _png(), {"Content-Type": "image/png"})[0] == 200


def _serve_cli(run, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "resnetlab", "serve", str(run), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_invalid_port_is_a_one_line_error(run, port):
    r = _serve_cli(run, "--port", port)
    assert r.returncode == 2 and "http://" not in r.stdout
    assert r.stderr == (
        f"resnetlab serve: error: --port {port} is not a port number; give one from 1 to 65535\n"
    )


def test_busy_port_is_a_one_line_error_and_no_url(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _serve_cli(run, "--port", str(port))
    assert r.returncode == 2 and "http://" not in r.stdout
    assert r.stderr == (
        f"resnetlab serve: error: port {port} is in use; pick another with --port\n"
    )


def test_same_probabilities_alone_and_under_concurrency(server):
    images = [_png(v) for v in (30, 90, 150, 210)]
    alone = [server.request("POST", "/predict?topk=10", im)[1]["topk"] for im in images]
    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(server.request, "POST", "/predict?topk=10", images[i % 4])
                   for i in range(32)]  # fmt: skip
        results = [f.result() for f in futures]
    for i, (status, r, _) in enumerate(results):
        assert status == 200
        expected = {t["index"]: t["prob"] for t in alone[i % 4]}
        assert all(abs(expected[t["index"]] - t["prob"]) <= 1e-5 for t in r["topk"])


def test_overload_gets_fast_503_with_retry_after(run):
    s = Server(run, "--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0")
    try:
        img = _png()
        with cf.ThreadPoolExecutor(48) as pool:
            results = list(pool.map(lambda _: s.request("POST", "/predict", img), range(96)))
        codes = [r[0] for r in results]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        busy = next(r for r in results if r[0] == 503)
        assert busy[2].get("retry-after") == "1" or busy[2].get("Retry-After") == "1"
        assert s.request("POST", "/predict", img)[0] == 200
    finally:
        s.stop()


def test_graceful_shutdown_finishes_in_flight_request(run):
    s = Server(run)
    result = {}
    sigterm_sent = threading.Event()

    def slow_body():
        yield _png()[:20]
        sigterm_sent.wait(10)  # the request is half uploaded when the server is told to stop
        time.sleep(0.3)
        yield _png()[20:]

    def call():
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        headers = {"Transfer-Encoding": "chunked", "Content-Type": "image/png"}
        conn.request("POST", "/predict", body=slow_body(), encode_chunked=True, headers=headers)
        r = conn.getresponse()
        result["status"], result["body"] = r.status, json.loads(r.read())

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    sigterm_sent.set()
    t.join(timeout=30)
    assert result["status"] == 200 and result["body"]["topk"]
    # uvicorn re-raises SIGTERM after its graceful shutdown, the conventional exit status.
    assert s.proc.wait(timeout=20) in (0, -signal.SIGTERM)


def test_lone_request_does_not_wait_for_a_batch(run):
    # With a one-minute batching window, a lone request that waited for company would run
    # into the client's 30 s timeout; it must be answered at once instead.
    s = Server(run, "--max-wait-ms", "60000")
    try:
        assert s.request("POST", "/predict", _png())[0] == 200
    finally:
        s.stop()


def test_web_page_in_chromium(server, tmp_path):
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it with apt-get")
        pytest.skip("chromium not installed (make test installs it)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import chrome_driver

    img = tmp_path / "digit.png"
    img.write_bytes(_png(200, (64, 64)))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    with chrome_driver(900, 700) as d:
        d.get(f"http://127.0.0.1:{server.port}/")
        WebDriverWait(d, 20).until(lambda d: "classes" in d.find_element(By.ID, "info").text)
        d.find_element(By.ID, "file").send_keys(str(img))
        WebDriverWait(d, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bar")) == 5)
        labels = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".bar .label span:first-child")]
        assert all(label in [str(i) for i in range(10)] for label in labels)
        assert d.find_element(By.ID, "preview").is_displayed()
        d.save_screenshot(str(tmp_path / "page.png"))
        d.find_element(By.ID, "file").send_keys(str(bad))
        err = WebDriverWait(d, 20).until(EC.visibility_of_element_located((By.ID, "error")))
        assert err.text.startswith("400")
        severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"
                  and "/predict" not in e["message"]]  # fmt: skip
        assert severe == []
    assert (tmp_path / "page.png").stat().st_size > 5000
