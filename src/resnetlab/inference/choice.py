"""``--backend auto``: measure the backends this machine has, keep the fastest whose outputs
agree with PyTorch fp32, and remember the choice in the run folder.

The fastest runtime differs by model and by CPU (onnxruntime leads for resnet18 on an AVX2
CPU, OpenVINO for resnet50; bf16 wins only where the CPU has it natively and is several times
slower where it is emulated), so no fixed choice is right everywhere. The measurement runs
the first time a model is used on a machine (a few seconds) and is cached in
``RUN/backend.json`` under a key of the CPU model, thread count and library versions; a
changed weights file, another CPU or other versions are measured again. A run folder that
cannot be written keeps its cache in the user's cache folder instead (``backends.cache_home``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import statistics
import time

import torch

from .. import __version__
from ..artifacts.run import user_cache_dir
from ..core.device import as_device, cpu_has_native_bf16, cpu_model, resolve_precision
from ..core.errors import ResnetlabError
from ..core.files import atomic_write_text
from .backends import BACKENDS, cache_home, create_backend, fingerprint
from .loading import LoadedModel

log = logging.getLogger("resnetlab.predict")

# (backend, precision) pairs, in order of preference when they measure the same.
CANDIDATES = (
    ("torch", "fp32"),
    ("onnx", "fp32"),
    ("openvino", "fp32"),
    ("torch", "bf16"),
    ("openvino-bf16", "bf16"),
)
# Agreement with PyTorch fp32 on the probe batch: fp32 runtimes within export --verify's
# tolerance; bf16 (8 bits of mantissa) within a few percent of the largest logit, with the
# same top-1 for at least 99 % of the probe images.
FP32_TOLERANCE = 1e-4
BF16_TOLERANCE = 0.05
MIN_TOP1_AGREEMENT = 0.99
PROBE_IMAGES = 32


@dataclasses.dataclass
class Choice:
    backend: str
    precision: str
    note: str  # the one line the command line prints
    results: list[dict]  # per candidate: images/s, max |diff|, agreement, error


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_key(threads: int | None = None) -> dict:
    """What a measurement depends on besides the model: the CPU, threads and versions."""
    return {
        "cpu": cpu_model(),
        "native_bf16": cpu_has_native_bf16(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "resnetlab": __version__,
    }


def candidates(device: torch.device, precision: str = "auto") -> list[tuple[str, str]]:
    """The (backend, precision) pairs worth measuring here; optional runtimes that are not
    installed and bf16 where it would only be emulated are left out."""
    out = []
    for name, prec in CANDIDATES:
        if name not in BACKENDS or (precision not in ("auto", prec)):
            continue
        if prec == "bf16" and not cpu_has_native_bf16():
            continue
        module = {"onnx": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}
        if name in module and _version(module[name]) is None:
            continue
        out.append((name, prec))
    return out


def _agreement(ref: torch.Tensor, out: torch.Tensor, precision: str) -> tuple[bool, float, float]:
    scale = max(1.0, float(ref.abs().max()))
    diff = float((out.float() - ref).abs().max()) / scale
    top1 = float((out.argmax(1) == ref.argmax(1)).float().mean())
    if precision == "fp32":
        return diff <= FP32_TOLERANCE, diff, top1
    return diff <= BF16_TOLERANCE and top1 >= MIN_TOP1_AGREEMENT, diff, top1


def _images_per_second(runs: list[tuple[object, torch.Tensor]], seconds: float) -> list[float]:
    """Images/s of each (backend, batch), timed in rounds: one batch of each in turn, median
    per backend. The machine may be shared: a burst of other work then slows every candidate
    alike instead of the one that happened to be measured during it."""
    for backend, batch in runs:
        backend.logits(batch)  # warm-up: first-call allocation and compilation
    times: list[list[float]] = [[] for _ in runs]
    start, budget = time.perf_counter(), seconds * len(runs)
    while len(times[0]) < 3 or (time.perf_counter() - start < budget and len(times[0]) < 50):
        for (backend, batch), spent in zip(runs, times):
            t0 = time.perf_counter()
            backend.logits(batch)
            spent.append(time.perf_counter() - t0)
    return [batch.shape[0] / statistics.median(t) for (_, batch), t in zip(runs, times)]


def measure(
    loaded: LoadedModel, pairs: list[tuple[str, str]], batch_size: int = 16, seconds: float = 1.0
) -> list[dict]:
    """Speed and agreement of each pair on a seeded probe batch of the model's input size;
    ``seconds``: the time per pair, spent in rounds over all of them."""
    c, h, w = loaded.meta.input_size
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(max(PROBE_IMAGES, batch_size), c, h, w, generator=g)
    with torch.inference_mode():
        reference = loaded.model.float().eval().to("cpu")(probe).float()
    results, runs = [], []
    for name, prec in pairs:
        row = {"backend": name, "precision": prec}
        try:
            backend = create_backend(name, loaded, "cpu", prec)
            layout = torch.channels_last if backend.channels_last else torch.contiguous_format
            x = probe.to(memory_format=layout)
            ok, diff, top1 = _agreement(reference, backend.logits(x), prec)
            row.update(agrees=ok, max_rel_diff=diff, top1_agreement=top1)
            runs.append((row, backend, x[:batch_size]))
        except (ResnetlabError, RuntimeError, OSError) as exc:  # a runtime that cannot run it
            row.update(agrees=False, error=str(exc).splitlines()[0][:300])
        results.append(row)
    if runs:
        speeds = _images_per_second([(backend, x) for _, backend, x in runs], seconds)
        for (row, _, _), speed in zip(runs, speeds):
            row["images_per_second"] = speed
    for row in results:
        log.info("backend %s %s: %s", row["backend"], row["precision"], row)
    return results


def _cache_key(loaded: LoadedModel, key: dict, batch_size: int) -> str:
    what = {
        **key,
        "weights": fingerprint(loaded.model),
        "input": loaded.meta.input_size,
        "batch": batch_size,
    }
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pick(results: list[dict]) -> dict | None:
    good = [r for r in results if r.get("agrees") and r.get("images_per_second")]
    return max(good, key=lambda r: r["images_per_second"]) if good else None


def _note(chosen: dict, results: list[dict], cached: bool, where: str = "the run folder") -> str:
    torch_fp32 = next(
        (
            r
            for r in results
            if (r["backend"], r["precision"]) == ("torch", "fp32") and r.get("images_per_second")
        ),
        None,
    )
    how = "measured once, cached" if cached else f"measured now, cached in {where}"
    ratio = (
        f"{chosen['images_per_second'] / torch_fp32['images_per_second']:.2f}× torch fp32"
        if torch_fp32
        else f"{chosen['images_per_second']:.0f} images/s"
    )
    return f"backend {chosen['backend']} {chosen['precision']}: {ratio} here ({how})"


def choose_backend(
    loaded: LoadedModel,
    device: str | torch.device | None = None,
    precision: str = "auto",
    batch_size: int = 16,
    seconds: float = 1.0,
) -> Choice:
    """The backend ``--backend auto`` runs for ``loaded`` on this machine."""
    device = as_device(device)
    if device.type != "cpu":  # GPUs: PyTorch with AMP, as training uses them
        prec = resolve_precision(precision, device)
        return Choice("torch", prec, f"backend torch {prec} on {device}", [])
    if loaded.run is None:  # no run folder to export into or to cache in
        prec = resolve_precision(precision, device)
        return Choice("torch", prec, f"backend torch {prec} (no run folder to measure in)", [])
    home = cache_home(loaded)
    if home is None:  # nowhere to keep the exports the other backends run, nor the choice
        prec = resolve_precision(precision, device)
        return Choice(
            "torch",
            prec,
            f"backend torch {prec} (not measured: neither {loaded.run} "
            f"nor {user_cache_dir()} can be written)",
            [],
        )
    key = machine_key()
    entry_key = f"{_cache_key(loaded, key, batch_size)}:{precision}"
    path = home.backend_choice
    cache = _read_cache(path)
    # A read-only run may have come with the measurement of this very machine and versions.
    entry = cache.get(entry_key) or _read_cache(loaded.run.backend_choice).get(entry_key)
    cached = entry is not None
    if entry is None:
        results = measure(loaded, candidates(device, precision), batch_size, seconds)
        entry = {
            "machine": key,
            "batch_size": batch_size,
            "results": results,
            "chosen": _pick(results),
        }
        cache[entry_key] = entry
        atomic_write_text(path, json.dumps(cache, indent=2))
    chosen = entry["chosen"]
    if chosen is None:  # nothing agreed (cannot happen for torch fp32): the plain path
        return Choice("torch", "fp32", "backend torch fp32 (no other backend agreed)", [])
    where = (
        "the run folder" if home == loaded.run else f"{home.path}: {loaded.run} cannot be written"
    )
    return Choice(
        chosen["backend"],
        chosen["precision"],
        _note(chosen, entry["results"], cached, where),
        entry["results"],
    )


def _read_cache(path) -> dict:
    try:
        cache = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}  # a damaged cache is only a cache: measure again
    return cache if isinstance(cache, dict) else {}
