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
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory):
    """The session's tiny digits run, copied: the server may write its caches into it."""
    import shutil

    root = tmp_path_factory.mktemp("serve")
    return Path(shutil.copytree(trained_run, root / "digits"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run, *extra, env=None):
        self.port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "resnetlab",
            "serve",
            str(run),
            "--port",
            str(self.port),
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.banner = self.proc.stdout.readline()
        # Its log, read as it comes: a full pipe would stall the server.
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()
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
        raise RuntimeError("server did not start: " + "".join(self.log))

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line)

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


# The servers here run the torch backend: what they check is the service, and --backend auto
# would measure every backend at start-up (an ONNX export, OpenVINO compiled; seconds).
# The journeys serve with auto as typed, test_backend_choice tests the choice itself.
TORCH = ("--backend", "torch")


@pytest.fixture(scope="module")
def server(run):
    s = Server(run, *TORCH)
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
    conn.request(
        "POST",
        "/predict",
        body=chunks(),
        encode_chunked=True,
        headers={"Transfer-Encoding": "chunked", "Content-Type": "image/png"},
    )
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


def test_bad_query_unknown_path_and_method_answer_in_the_error_shape(server):
    png = {"Content-Type": "image/png"}
    status, r, _ = server.request("POST", "/predict?topk=abc", _png(), png)
    assert status == 400 and list(r) == ["error"]
    assert r["error"].startswith("topk: input should be a valid integer") and "'abc'" in r["error"]
    status, r, _ = server.request("GET", "/nowhere")
    assert status == 404 and list(r) == ["error"] and "POST /predict" in r["error"]
    status, r, _ = server.request("GET", "/predict")
    assert status == 405 and r == {"error": "GET is not allowed on /predict; use POST"}


def test_413_reaches_a_client_that_sends_the_whole_body_first(server):
    """urllib (like requests) writes the whole body before it reads the answer; the server
    reads and drops the rest of a refused body so that such a client sees the 413 instead of
    a connection reset."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/predict",
        data=b"\0" * (24 * 10**6),
        headers={"Content-Type": "image/png"},
        method="POST",
    )
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
        futures = [
            pool.submit(server.request, "POST", "/predict?topk=10", images[i % 4])
            for i in range(32)
        ]
        results = [f.result() for f in futures]
    for i, (status, r, _) in enumerate(results):
        assert status == 200
        expected = {t["index"]: t["prob"] for t in alone[i % 4]}
        assert all(abs(expected[t["index"]] - t["prob"]) <= 1e-5 for t in r["topk"])


def test_overload_gets_fast_503_with_retry_after(run):
    s = Server(run, *TORCH, "--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0")
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
    s = Server(run, *TORCH)
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
    s = Server(run, *TORCH, "--max-wait-ms", "60000")
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
        severe = [
            e
            for e in d.get_log("browser")
            if e["level"] == "SEVERE" and "/predict" not in e["message"]
        ]
        assert severe == []
    assert (tmp_path / "page.png").stat().st_size > 5000


# ------------------------------------------------------------------ operating the service
# One server with every operations flag; its checks run in order on it.

KEY = "test-key-0123"
ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def ops(run):
    s = Server(
        run,
        *TORCH,
        "--api-key",
        KEY,
        "--cors-origin",
        ORIGIN,
        "--max-queue",
        "2",
        "--max-reading",
        "1",
        "--log-format",
        "json",
    )
    yield s
    s.stop()


def _keyed(**headers):
    return {"X-API-Key": KEY, **headers}


def _wait_in_flight(s, count):
    for _ in range(300):
        if s.request("GET", "/readyz")[1]["in_flight"] == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"in_flight never reached {count}")


def _log_line(s, request_id):
    for _ in range(100):
        for line in s.log:
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("request_id") == request_id and "status" in entry:
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}: {s.log[-5:]}")


def test_health_routes_are_open_and_the_rest_needs_the_key(ops):
    for path in ("/health", "/livez", "/readyz"):
        assert ops.request("GET", path)[0] == 200
    assert ops.request("GET", "/readyz")[1]["status"] == "ready"
    for path in ("/model", "/metrics", "/docs", "/"):
        status, r, headers = ops.request("GET", path)
        assert status == 401 and "API key" in r["error"]
        assert headers.get("www-authenticate") == "Bearer"
    status, r, _ = ops.request("POST", "/predict", _png(), {"Content-Type": "image/png"})
    assert status == 401
    assert ops.request("GET", "/model", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    assert ops.request("GET", "/model", headers={"X-API-Key": "wrong"})[0] == 401
    status, r, _ = ops.request("POST", "/predict", _png(), _keyed(**{"Content-Type": "image/png"}))
    assert status == 200 and r["topk"]


def test_request_id_echoed_generated_and_logged(ops):
    _, _, headers = ops.request("GET", "/livez", headers={"X-Request-ID": "client-id-42"})
    assert headers["x-request-id"] == "client-id-42"
    _, _, headers = ops.request("GET", "/livez", headers={"X-Request-ID": "bad id\twith spaces"})
    fresh = headers["x-request-id"]
    assert fresh != "bad id\twith spaces" and len(fresh) == 32
    status, _, headers = ops.request(
        "POST",
        "/predict?topk=2",
        _png(),
        _keyed(**{"X-Request-ID": "rid-7", "Content-Type": "image/png"}),
    )
    assert status == 200 and headers["x-request-id"] == "rid-7"
    line = _log_line(ops, "rid-7")
    assert line["method"] == "POST" and line["path"] == "/predict" and line["query"] == "topk=2"
    assert line["status"] == 200 and line["bytes_in"] == len(_png()) and line["bytes_out"] > 0
    assert line["client"].startswith("127.0.0.1:") and line["duration_ms"] >= 0


def test_cors_preflight_and_exposed_headers(ops):
    pre = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type",
    }
    status, _, headers = ops.request("OPTIONS", "/predict", headers=pre)
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in headers["access-control-allow-headers"].lower()
    status, _, _ = ops.request(
        "OPTIONS", "/predict", headers={**pre, "Origin": "http://evil.example"}
    )
    assert status == 400
    _, _, headers = ops.request("GET", "/model", headers=_keyed(Origin=ORIGIN))
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in headers["access-control-expose-headers"].lower()


def _half_upload(port):
    """A request whose headers are sent and whose body stops after 4 of 100,000 bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        b"POST /predict HTTP/1.1\r\nHost: t\r\nX-API-Key: "
        + KEY.encode()
        + b"\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89PNG"
    )
    return s


def test_admission_refuses_before_the_body_is_read(ops):
    """--max-queue 2 --max-reading 1: two uploads that stall hold both places (one reading, one
    waiting unread); a third is refused with 503 + Retry-After without its body being read."""
    slow = [_half_upload(ops.port), _half_upload(ops.port)]
    try:
        _wait_in_flight(ops, 2)
        headers = _keyed(**{"Content-Type": "image/png", "X-Request-ID": "refused-1"})
        status, r, got = ops.request("POST", "/predict", b"\0" * (3 * 2**20), headers)
        assert status == 503 and "busy" in r["error"] and got["retry-after"] == "1"
        line = _log_line(ops, "refused-1")
        assert line["status"] == 503 and line["bytes_in"] == 0
        status, text, _ = ops.request("GET", "/metrics", headers=_keyed())
        assert 'resnetlab_refused_total{reason="busy"} 1.0' in text
        assert (
            "resnetlab_requests_in_flight 2.0" in text and "resnetlab_requests_reading 1.0" in text
        )
    finally:
        for s in slow:
            s.close()
    _wait_in_flight(ops, 0)
    assert (
        ops.request("POST", "/predict", _png(), _keyed(**{"Content-Type": "image/png"}))[0] == 200
    )


def test_metrics_in_prometheus_format(ops):
    ops.request("POST", "/predict", _png(), _keyed(**{"Content-Type": "image/png"}))
    status, text, headers = ops.request("GET", "/metrics", headers=_keyed())
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for expected in (
        'resnetlab_requests_total{method="POST",route="/predict",status="200"}',
        'resnetlab_requests_total{method="GET",route="/model",status="401"}',
        'resnetlab_request_duration_seconds_bucket{le="0.005",route="/predict"}',
        "resnetlab_batch_size_bucket{le=",
        "resnetlab_batch_size_count",
        "resnetlab_queue_depth 0.0",
        'resnetlab_model_info{backend="',
        'model="resnet20"',
        'resnetlab_limit{name="max_queue"} 2.0',
        "resnetlab_ready 1.0",
        "process_resident_memory_bytes",
    ):
        assert expected in text, expected


def test_openapi_documents_the_body_and_docs_need_no_cdn(server):
    status, spec, _ = server.request("GET", "/openapi.json")
    body = spec["paths"]["/predict"]["post"]["requestBody"]
    assert status == 200 and {"multipart/form-data", "image/*"} <= set(body["content"])
    assert "file" in body["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"/livez", "/readyz", "/metrics"} <= set(spec["paths"])
    status, page, _ = server.request("GET", "/docs")
    assert status == 200 and "/predict" in page and "multipart/form-data" in page
    assert "<script" not in page and "src=" not in page and "cdn" not in page.lower()


def test_multipart_with_several_files_answers_each(server):
    boundary = "many-files"
    parts = [("a.png", _png(30)), ("b.png", _png(200)), ("notes.png", b"not an image")]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    # a plain field too: not a file, not answered
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'.encode()
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, r, _ = server.request("POST", "/predict?topk=2", body, headers)
    assert status == 200 and [x["filename"] for x in r["results"]] == [
        "a.png",
        "b.png",
        "notes.png",
    ]
    assert len(r["results"][0]["topk"]) == 2 and len(r["results"][1]["topk"]) == 2
    assert r["results"][2]["status"] == 400 and "cannot decode" in r["results"][2]["error"]
    alone = server.request("POST", "/predict?topk=2", *_multipart(_png(200)))[1]
    assert [t["index"] for t in alone["topk"]] == [t["index"] for t in r["results"][1]["topk"]]


def test_banner_url_for_every_interface():
    from resnetlab.serve.sockets import url

    assert url("0.0.0.0", 8000).startswith("http://127.0.0.1:8000/ ")
    assert url("::", 8000).startswith("http://[::1]:8000/ ")
    assert url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert url("::1", 8000) == "http://[::1]:8000/"


def test_port_refuses_connections_until_it_listens():
    """serve binds the port first (a busy port is said at once) and listens only once the model
    is loaded: a load balancer's TCP check sees it closed until then."""
    from resnetlab.serve.sockets import bind, start_listening

    port = _free_port()
    sock = bind("127.0.0.1", port)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        start_listening(sock)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        sock.close()


def test_processes_share_the_port_and_stop_without_traceback(run):
    """--processes 2: both workers answer on one port and /metrics adds them up; SIGTERM with an
    upload half sent ends after --shutdown-timeout with one line, not a traceback."""
    s = Server(run, *TORCH, "--processes", "2", "--shutdown-timeout", "1")
    try:
        assert "2 processes" in s.banner and s.listening_at_banner
        with cf.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: s.request("POST", "/predict", _png())[0], range(32)))
        assert codes == [200] * 32
        text = s.request("GET", "/metrics")[1]
        assert 'resnetlab_requests_total{method="POST",route="/predict",status="200"} 32.0' in text
        assert text.count("resnetlab_worker_resident_memory_bytes{pid=") == 2
        half = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        half.sendall(
            b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
            b"Content-Length: 5000\r\n\r\n\x89PNG"
        )
        deadline = time.time() + 30  # the upload is being read (a loaded machine is slow)
        while "resnetlab_requests_reading 1.0" not in s.request("GET", "/metrics")[1]:
            assert time.time() < deadline, "the half-sent upload was never being read"
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=60) == 0
        half.close()
    finally:
        s.stop()
    s.reader.join(timeout=30)  # the log to its end
    log = "".join(s.log)
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "cut off by the shutdown" in log, log
