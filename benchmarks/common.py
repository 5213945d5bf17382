"""Shared benchmark helpers: provenance, alternating timed runs, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

RESULTS = Path(__file__).parent / "results"


def environment() -> dict:
    cpu, flags = platform.processor(), []
    # family and model numbers: a virtual machine's "model name" is often just "AMD EPYC",
    # which says nothing of its generation (family 25 model 17 is Zen 4, 25/1 Zen 3)
    family = model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("cpu family"):
                    family = int(line.split(":", 1)[1])
                elif line.split(":", 1)[0].strip() == "model":
                    model = int(line.split(":", 1)[1])
                if line.startswith("flags"):
                    flags = sorted(
                        f for f in line.split(":", 1)[1].split() if "avx512" in f or "amx" in f
                    )
                    break
    except OSError:
        pass
    import resnetlab

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resnetlab": resnetlab.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_family": family,
        "cpu_model_number": model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def summarize(samples: list[float]) -> dict:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


def alternate(runs: dict, repetitions: int, warmup: int = 1) -> dict:
    """Call each ``runs[name]()`` in turn, ``repetitions`` times after ``warmup``; images/s per
    repetition, so both paths see the same machine noise. A run returns its image count, or a
    ``Worker`` reply (images and the seconds the worker itself measured)."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repetitions):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            done = fn()
            seconds = time.perf_counter() - t0
            if isinstance(done, dict):
                done, seconds = done["images"], done["seconds"]
            rates[name].append(done / seconds)
    return {name: summarize(r) for name, r in rates.items()}


REPLY = "@@bench "


class Worker:
    """One side of a comparison in its own Python process, started the way a user starts it.

    Process-wide state (thread pools, the allocator settings the ``resnetlab`` command applies)
    then belongs to that side alone. Calling the worker runs its job once and returns
    ``{"images", "seconds", ...}`` as measured inside the worker.
    """

    def __init__(self, script: str | Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._reply()  # ready

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        raise RuntimeError(f"benchmark worker {self.proc.args} exited with {self.proc.wait()}")

    def __call__(self) -> dict:
        self.proc.stdin.write("run\n")
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def serve_worker(job) -> None:
    """The worker's side of ``Worker``: ``job() -> images`` or ``(images, extra dict)``."""

    def reply(payload: dict) -> None:
        sys.stdout.write(REPLY + json.dumps(payload) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        t0 = time.perf_counter()
        done = job()
        seconds = time.perf_counter() - t0
        images, extra = done if isinstance(done, tuple) else (done, {})
        reply({"images": images, "seconds": seconds, **extra})


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def make_jpeg_folder(root: Path, classes: int, per_class: int, sizes, seed: int = 0) -> Path:
    """Photos-like JPEGs (smooth gradients plus noise) of mixed sizes in ImageFolder layout."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            w, h = sizes[(c * per_class + k) % len(sizes)]
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack(
                [(xx * (c + 1) * 255 // w) % 256, (yy * 255 // h), np.full_like(xx, 40 * c)], -1
            )
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{k}.jpg", quality=90)
    return root
