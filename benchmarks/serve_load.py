"""Serving under load: micro-batching on vs off, loopback only, bounded request counts.

Starts `resnetlab serve` twice on free 127.0.0.1 ports (--max-batch 16 and --max-batch 1),
sends the same image from 1, 8 and 32 concurrent keep-alive clients, and records p50/p90/p99
latency and requests/s. The model is the demo's resnet20 trained briefly on digits.
"""

from __future__ import annotations

import http.client
import io
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from resnetlab.train import Trainer, resolve_config  # noqa: E402

LEVELS = {1: 60, 8: 240, 32: 480}  # concurrency -> requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path, max_batch: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resnetlab",
            "serve",
            str(run),
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--max-queue",
            "256",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    proc.stdout.readline()
    for _ in range(300):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def load(port: int, body: bytes, concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(total))

    def client():
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            conn.request("POST", "/predict?topk=1", body, {"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                errors += r.status != 200
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start_t = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_t
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": len(ms) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="resnetlab-serve-bench-"))
    cfg = resolve_config(dict(epochs=2, out=str(tmp), name="digits", num_workers=0))
    Trainer(cfg, verbose=False).fit()
    run = tmp / "digits"
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(
        buf, "PNG"
    )
    body = buf.getvalue()
    results: dict = {}
    for label, max_batch in (("batching_on", 16), ("batching_off", 1)):
        proc, port = start(run, max_batch)
        try:
            load(port, body, 4, 40)  # warm-up
            results[label] = {str(c): load(port, body, c, n) for c, n in LEVELS.items()}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ratio = (
        results["batching_on"]["32"]["requests_per_second"]
        / results["batching_off"]["32"]["requests_per_second"]
    )
    write_result(
        "serve_load",
        {
            "model": "resnet20 (digits, 1x32x32)",
            "levels": LEVELS,
            "results": results,
            "ratio_at_32": ratio,
        },
    )
    for label, per in results.items():
        for c, r in per.items():
            print(
                f"{label:13} c={c:>2}  {r['requests_per_second']:7.1f} req/s  p50 "
                f"{r['p50_ms']:6.1f} ms  p90 {r['p90_ms']:6.1f}  p99 {r['p99_ms']:6.1f}  "
                f"errors {r['errors']}"
            )
    print(f"requests/s at concurrency 32, batching on / off: x{ratio:.2f}")


if __name__ == "__main__":
    main()
