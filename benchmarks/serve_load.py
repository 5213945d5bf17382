"""Serving under load: `resnetlab serve` beside LitServe and a plain FastAPI server.

Three servers of one model on free 127.0.0.1 ports, side by side in one run:

- ``resnetlab``: the real command line, ``python -m resnetlab serve RUN --port N``, defaults;
- ``litserve``: LitServe with its own batching (``max_batch_size``, ``batch_timeout``: the
  same 16 images and 5 ms as resnetlab's defaults) around ``resnetlab.load(RUN).predict``,
  with the runtime (backend, precision) ``resnetlab serve`` chose: the same weights,
  decoding, preprocessing and runtime, only the serving differs (serve_peers/);
- ``fastapi``: FastAPI + torchvision as the tutorials write it (one request: PIL open,
  transforms, the model in eager PyTorch, JSON), under uvicorn (serve_peers/).

All three are up at once; each level is run on each server in turn (the order rotates from
one level to the next, the two others stopped with SIGSTOP meanwhile), so the three see the
same machine. Clients (http_load.py) keep their connection alive, send the same 64x64 PNG as
a multipart upload (``curl -F file=@x.png``) and send again as soon as they have an answer:
at concurrency 1, 8, 32 and 128, then 128 that ignore Retry-After (retry a 503 at once);
plus, at concurrency 1, a new connection per request (against keep-alive), and a burst of
128 concurrent ~9 MB PNG uploads (memory growth).
Per level: good requests/s (200s), p50/p95 latency of the accepted requests, 503s, and the
server's resident memory (the peak, summed over its processes; LitServe runs several).

    python benchmarks/serve_load.py                  # about 4 minutes
    python benchmarks/serve_load.py --seconds 30 --rounds 3
    python benchmarks/serve_load.py --smoke          # resnetlab alone, 1 s a level

The model is the demo's resnet20 trained one epoch on digits, in the user's cache folder
(kept between runs), or the run folder given with --run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import http_load  # noqa: E402
from common import environment, write_result  # noqa: E402

HERE = Path(__file__).parent
PEERS = HERE / "serve_peers"
HOST = "127.0.0.1"
SERVERS = ("resnetlab", "litserve", "fastapi")
MAX_BATCH, BATCH_WAIT_S = 16, 0.005  # resnetlab serve's defaults (--max-batch, --max-wait-ms)
# (name, concurrency, keep-alive, honours Retry-After)
LEVELS = [
    ("c1", 1, True, True),
    ("c1_new_connection", 1, False, True),
    ("c8", 8, True, True),
    ("c32", 32, True, True),
    ("c128", 128, True, True),
    ("c128_ignore_retry_after", 128, True, False),
]
GOALS = {
    "keepalive_p50_over_new_connection": 1.3,  # at most
    "c128_ignoring_retry_after_over_c32": 0.8,  # at least
    "big_upload_rss_growth_mb": 300,  # at most
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def find_or_train(run: str | None) -> Path:
    """The run folder given, else the benchmark's own in the user's cache folder (trained
    there once: resnet20, digits, one epoch, about 40 s on 2 cores)."""
    import resnetlab
    from resnetlab.artifacts.run import user_cache_dir

    if run:
        return Path(run)
    folder = user_cache_dir() / "benchmarks" / "serve-digits"
    path = folder / "digits"
    if (path / "summary.json").exists():
        try:
            resnetlab.load(path)
            return path
        except Exception as exc:  # an older format, a partial copy: train it again
            print(f"retraining the benchmark's model ({exc})", flush=True)
    import shutil

    from resnetlab.train import Trainer, resolve_config

    shutil.rmtree(folder, ignore_errors=True)
    print(f"training the benchmark's model into {path} (once)", flush=True)
    cfg = resolve_config(dict(epochs=1, out=str(folder), name="digits", num_workers=0))
    Trainer(cfg, verbose=False).fit()
    return path


def png(side: int, channels: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (side, side) if channels == 1 else (side, side, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


class Server:
    """One server process (and its children), started in its own session so that it and
    every process it forks can be stopped together."""

    def __init__(self, name: str, argv: list[str], port: int, logs: Path) -> None:
        self.name, self.argv, self.port = name, argv, port
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.started_s: float | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "w")  # noqa: SIM115 (open while the server runs)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                c = http.client.HTTPConnection(HOST, self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    self.started_s = time.perf_counter() - self.t0
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer /health in {timeout:.0f} s")

    def processes(self):
        import psutil

        try:
            main = psutil.Process(self.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_mb(self, procs=None) -> float:
        """Resident memory in MB summed over the server's processes (``procs``: a list from
        ``processes()``, kept by the caller: finding them costs more than reading them). Cheap
        (/proc/PID/statm): it is sampled while the clients run, in their thread."""
        import psutil

        total = 0
        for p in procs if procs is not None else self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_info().rss
        return total / 2**20

    def cpu_seconds(self, procs) -> float:
        """User + system CPU time of ``procs`` so far (a process gone since counts 0)."""
        import psutil

        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def memory(self) -> dict:
        """RSS and USS in MB, summed over the server's processes: RSS counts the pages that
        forked processes share once in each, USS (private memory) counts each page once. USS
        reads every mapping (20-90 ms here): read between levels, not during one."""
        import psutil

        rss = uss = 0
        procs = self.processes()
        for p in procs:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss, uss = rss + info.rss, uss + info.uss
        return {"rss_mb": rss / 2**20, "uss_mb": uss / 2**20, "processes": len(procs)}

    def pause(self) -> None:
        """Stopped (SIGSTOP) while another server is measured: an idle LitServe polls its
        queues (about 13 % of a core here), which the others would pay for."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # what it forked and left (LitServe's)
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def start_servers(servers: dict, names, run: Path, logs: Path, backend: str | None) -> None:
    """Into ``servers`` as each is started (so that a failed start still stops the others):
    resnetlab first and alone (``--backend auto`` times the runtimes), then the peers."""
    py = sys.executable
    if "resnetlab" in names:
        port = free_port()
        argv = [py, "-m", "resnetlab", "serve", str(run), "--host", HOST, "--port", str(port)]
        if backend:
            argv += ["--backend", backend]
        servers["resnetlab"] = Server("resnetlab", argv, port, logs)
        servers["resnetlab"].start()
        servers["resnetlab"].wait_ready()
    runtime = resnetlab_runtime(servers.get("resnetlab"), backend)
    if "litserve" in names:
        port = free_port()
        argv = [py, str(PEERS / "litserve_server.py"), str(run), str(port), *runtime]
        argv += [str(MAX_BATCH), str(BATCH_WAIT_S)]
        servers["litserve"] = Server("litserve", argv, port, logs)
    if "fastapi" in names:
        port = free_port()
        argv = [py, str(PEERS / "fastapi_tutorial.py"), str(run), str(port)]
        servers["fastapi"] = Server("fastapi", argv, port, logs)
    for name in ("litserve", "fastapi"):
        if name in servers:
            servers[name].start()
    for s in servers.values():
        s.wait_ready()


def resnetlab_runtime(server: Server | None, backend: str | None) -> tuple[str, str]:
    """(backend, precision) from the banner ``resnetlab serve: resnet20 (10 classes,
    openvino, fp32) at ...``; the peers run the same."""
    if server is not None:
        m = re.search(r"\(\d+ \w+, (\w+), (\w+)", server.log_path.read_text())
        if m:
            return m.group(1), m.group(2)
    return backend or "torch", "fp32"


def only(servers: dict[str, Server], name: str) -> Server:
    """``servers[name]`` running, the others paused."""
    for other, s in servers.items():
        if other != name:
            s.pause()
    servers[name].resume()
    time.sleep(0.2)
    return servers[name]


def run_levels(servers: dict[str, Server], image: bytes, args) -> dict:
    results: dict = {name: {} for name in servers}
    order = list(servers)
    levels = [lv for lv in LEVELS if lv[1] in args.concurrency]
    for r in range(args.rounds):
        for i, (label, c, keep_alive, polite) in enumerate(levels):
            k = (i + r) % len(order)
            for name in order[k:] + order[:k]:
                s = only(servers, name)
                procs = s.processes()
                cpu0 = s.cpu_seconds(procs)
                head, body = http_load.multipart_request(HOST, s.port, "/predict", image)
                close_head, _ = http_load.multipart_request(
                    HOST, s.port, "/predict", image, close=True
                )
                out = asyncio.run(
                    http_load.run_level(
                        HOST,
                        s.port,
                        head,
                        body,
                        c,
                        args.seconds,
                        args.warmup,
                        keep_alive=keep_alive,
                        honour_retry_after=polite,
                        sample=partial(s.rss_mb, procs),
                        close_head=close_head,
                    )
                )
                samples = out.pop("samples")
                # the server's CPU time per answered request, warm-up included: a figure that
                # other jobs on a shared machine disturb less than requests/s
                cpu = s.cpu_seconds(procs) - cpu0
                out["cpu_ms_per_good"] = 1000 * cpu / max(1, out.pop("good_with_warmup"))
                out["rss_mb"] = max(samples, default=None)  # the peak while measured
                out["uss_mb"] = s.memory()["uss_mb"]  # after the level
                out["load_average_1m"] = os.getloadavg()[0]
                results[name].setdefault(label, []).append(out)
                print(line(name, label, out), flush=True)
    return results


def line(name: str, label: str, r: dict) -> str:
    p50 = f"{r['p50_ms']:7.1f}" if r["p50_ms"] is not None else "      -"
    p95 = f"{r['p95_ms']:7.1f}" if r["p95_ms"] is not None else "      -"
    extra = ""
    if r["other_statuses"] or r["broken_connections"]:
        extra = f"  other {r['other_statuses']} broken {r['broken_connections']}"
    rss = f"{r['rss_mb']:6.0f}" if r.get("rss_mb") is not None else "     -"
    return (
        f"{name:9} {label:24} {r['good_per_second']:7.1f} good/s  p50 {p50} ms  p95 {p95} ms"
        f"  503 {r['refused_503']:5d}  CPU {r['cpu_ms_per_good']:5.2f} ms/req  RSS {rss} MB{extra}"
    )


def big_uploads(servers: dict[str, Server], n: int, mb: float) -> dict:
    side = int((mb * 1e6 / 3) ** 0.5)
    image = png(side, 3, seed=1)
    out = {"image_bytes": len(image), "image_size": [side, side], "clients": n}
    print(f"burst: {n} concurrent uploads of a {len(image) / 1e6:.1f} MB PNG ({side}x{side} RGB)")
    for name in servers:
        s = only(servers, name)
        time.sleep(1)
        before = s.memory()
        head, body = http_load.multipart_request(HOST, s.port, "/predict", image, close=True)
        procs = s.processes()
        r = asyncio.run(
            http_load.burst(HOST, s.port, head, body, n, sample=partial(s.rss_mb, procs))
        )
        samples = r.pop("samples")
        peak = max([*samples, before["rss_mb"]])
        time.sleep(1)
        after = s.memory()
        r.update(
            rss_before_mb=before["rss_mb"],
            rss_peak_mb=peak,
            rss_growth_mb=peak - before["rss_mb"],
            rss_after_mb=after["rss_mb"],
            uss_after_mb=after["uss_mb"],
        )
        for k in ("seconds", "good_per_second", "p99_ms"):
            r.pop(k)
        out[name] = r
        print(
            f"{name:9} {r['good']:4d} answered 200 in {r['wall_seconds']:5.1f} s, 503 "
            f"{r['refused_503']}, other {r['other_statuses']}, broken {r['broken_connections']}"
            f"  RSS {before['rss_mb']:.0f} -> peak {peak:.0f} MB (+{peak - before['rss_mb']:.0f})"
        )
    return out


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(np.median(values)) if values else None


def summarize(results: dict) -> dict:
    """Per server and level, the median over rounds of each figure."""
    keys = ("good_per_second", "p50_ms", "p95_ms", "refused_503", "cpu_ms_per_good")
    keys += ("rss_mb", "uss_mb")
    return {
        name: {label: {k: median(runs, k) for k in keys} for label, runs in per.items()}
        for name, per in results.items()
    }


def goals(table: dict, burst: dict | None) -> dict:
    ours = table.get("resnetlab", {})
    out: dict = {}
    ka, new = ours.get("c1", {}).get("p50_ms"), ours.get("c1_new_connection", {}).get("p50_ms")
    if ka and new:
        ratio = ka / new
        out["keepalive_p50_over_new_connection"] = {
            "value": ratio,
            "at_most": GOALS["keepalive_p50_over_new_connection"],
            "met": ratio <= GOALS["keepalive_p50_over_new_connection"],
        }
    peak = ours.get("c32", {}).get("good_per_second")
    rude = ours.get("c128_ignore_retry_after", {}).get("good_per_second")
    if peak and rude is not None:
        ratio = rude / peak
        out["c128_ignoring_retry_after_over_c32"] = {
            "value": ratio,
            "at_least": GOALS["c128_ignoring_retry_after_over_c32"],
            "met": ratio >= GOALS["c128_ignoring_retry_after_over_c32"],
        }
    if burst and "resnetlab" in burst:
        growth = burst["resnetlab"]["rss_growth_mb"]
        out["big_upload_rss_growth_mb"] = {
            "value": growth,
            "at_most": GOALS["big_upload_rss_growth_mb"],
            "met": growth <= GOALS["big_upload_rss_growth_mb"],
        }
    peers = [p for p in ("litserve", "fastapi") if p in table]
    if ours and peers:
        behind = {}
        for label, mine in ours.items():
            for p in peers:
                theirs = table[p].get(label, {}).get("good_per_second")
                if theirs is not None and mine["good_per_second"] <= theirs:
                    behind.setdefault(label, []).append(p)
        ratios = {
            label: {
                p: mine["good_per_second"] / table[p][label]["good_per_second"]
                for p in peers
                if table[p].get(label, {}).get("good_per_second")
            }
            for label, mine in ours.items()
        }
        out["ahead_of_peers_in_good_per_second"] = {
            "ratios": ratios,
            "behind": behind,
            "met": not behind,
        }
    return out


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("fastapi", "starlette", "uvicorn", "litserve", "uvloop", "httptools", "psutil"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds a level")
    ap.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each")
    ap.add_argument("--rounds", type=int, default=1, help="times each level is run")
    ap.add_argument("--concurrency", default="1,8,32,128", help="levels, comma-separated")
    ap.add_argument("--servers", default=",".join(SERVERS), help="of " + ", ".join(SERVERS))
    ap.add_argument("--run", help="a trained run folder (default: the benchmark's own)")
    ap.add_argument("--backend", help="resnetlab serve's --backend (default: its own, auto)")
    ap.add_argument("--burst", type=int, default=128, help="concurrent big uploads (0: none)")
    ap.add_argument("--burst-mb", type=float, default=9.0, help="size of each big upload")
    ap.add_argument("--out", help="the JSON file (default: benchmarks/results/serve_load.json)")
    ap.add_argument(
        "--smoke", action="store_true", help="resnetlab alone, levels 1 and 8, 1 s each"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.rounds, args.burst = 1.0, 0.3, 1, 4
        args.servers, args.concurrency, args.burst_mb = "resnetlab", "1,8", 1.0
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown:
        sys.exit(f"--servers: unknown {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    if "litserve" in names:
        try:
            import litserve  # noqa: F401
        except ImportError:
            sys.exit(
                "litserve is not installed: `make bench` installs the serving peers (the "
                "bench extra: pip install -c constraints.txt -e '.[bench]'), or leave it out "
                "with --servers resnetlab,fastapi"
            )
    args.concurrency = {int(c) for c in args.concurrency.split(",")}
    run = find_or_train(args.run)
    import resnetlab

    meta = resnetlab.load(run).meta
    image = png(64, meta.in_chans)
    logs = Path(tempfile.mkdtemp(prefix="resnetlab-serve-bench-"))
    load_start = os.getloadavg()
    servers: dict[str, Server] = {}
    t0 = time.perf_counter()
    try:
        start_servers(servers, names, run, logs, args.backend)
        runtime = resnetlab_runtime(servers.get("resnetlab"), args.backend)
        for s in servers.values():
            print(f"{s.name:9} up in {s.started_s:.1f} s on port {s.port}, {s.memory()}")
        results = run_levels(servers, image, args)
        burst = big_uploads(servers, args.burst, args.burst_mb) if args.burst else None
    finally:
        for s in servers.values():
            s.stop()
    table = summarize(results)
    met = goals(table, burst)
    payload = {
        "model": f"{meta.model} ({run.name}, {'x'.join(map(str, meta.input_size))})",
        "run": str(run),
        "runtime": {"backend": runtime[0], "precision": runtime[1]},
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "levels": [
                {"label": lbl, "concurrency": c, "keep_alive": ka, "honours_retry_after": p}
                for lbl, c, ka, p in LEVELS
                if c in args.concurrency
            ],
            "image_bytes": len(image),
            "request": "multipart/form-data, field 'file' (curl -F file=@x.png)",
            "max_batch": MAX_BATCH,
            "batch_wait_s": BATCH_WAIT_S,
        },
        "servers": {
            name: {"argv": s.argv[1:], "start_seconds": s.started_s} for name, s in servers.items()
        },
        "versions": versions(),
        "load_average_before": load_start,
        "load_average_after": os.getloadavg(),
        "wall_seconds": time.perf_counter() - t0,
        "table": table,
        "goals": met,
        "big_uploads": burst,
        "runs": results,
    }
    if args.out or args.smoke:
        path = Path(args.out or logs / "serve_load.json")
        payload = {"benchmark": "serve_load", "environment": environment(), **payload}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
    else:
        write_result("serve_load", payload)
    for name, goal in met.items():
        shown = {k: v for k, v in goal.items() if k != "ratios"}
        print(f"goal {name}: {json.dumps(shown)}")


if __name__ == "__main__":
    main()
