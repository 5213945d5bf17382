"""Inference backends: one small class per runtime behind one interface, and beside them the
scheduling that runs batches side by side on the CPU.

A backend takes a preprocessed float batch (N, C, H, W) and returns float32 logits on the CPU.
Adding one is a class with a ``name`` and ``logits``, registered with ``@register_backend``;
``predict`` and ``serve`` then accept it as ``--backend NAME``.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
import json
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, TypeVar

import torch

from ..artifacts.run import RunDir, user_cache_dir
from ..core.device import as_device, autocast, resolve_precision
from ..core.errors import ConfigError, MissingFileError, StaleExportError
from ..core.fmt import shell_command
from ..core.optional import require
from ..metrics.fingerprint import weights_fingerprint
from .export import (
    WEIGHTS_KEY,
    check_external_data,
    export_onnx,
    is_resnetlab_export,
    onnx_logits,
    onnx_session,
)
from .loading import LoadedModel, model_on

log = logging.getLogger("resnetlab.predict")
T = TypeVar("T")


class Backend(abc.ABC):
    """Runs one model: ``logits(batch)`` for a preprocessed float batch."""

    name: ClassVar[str]  # the --backend value
    precision: str  # what the arithmetic runs in: fp32, bf16, fp16, int8
    device: torch.device  # where input batches should be
    channels_last: bool = False  # the input layout it runs fastest with
    # Whether batches may run side by side in CPU streams, each with a share of the intra-op
    # threads; a runtime with its own thread pool (onnxruntime) or a GPU runs one at a time.
    parallel: bool = False

    @abc.abstractmethod
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """float batch (N, C, H, W) on ``device`` -> float32 logits (N, classes) on the CPU."""


BACKENDS: dict[str, type[Backend]] = {}
B = TypeVar("B", bound=type[Backend])


def register_backend(cls: B) -> B:
    """Make ``cls`` available as ``--backend cls.name``."""
    if cls.name in BACKENDS:
        raise ValueError(f"backend {cls.name!r} is registered twice")
    BACKENDS[cls.name] = cls
    return cls


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"--backend {name!r} is not one of {', '.join(BACKENDS)}")
    return name


def create_backend(
    name: str,
    loaded: LoadedModel,
    device: str | torch.device | None = None,
    precision: str = "auto",
    path: str | os.PathLike | None = None,
) -> Backend:
    """The backend ``name`` for ``loaded``; ``path``: an exported file to run instead of the
    run's own (backends that run exported files)."""
    return BACKENDS[check_backend(name)](loaded, device=device, precision=precision, path=path)


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fingerprint(model: torch.nn.Module) -> str:
    """``metrics.fingerprint.weights_fingerprint(model)``, computed once per state of the weights.

    ``--backend auto``'s cache key and the export's staleness check both need it, and hashing
    resnet50's 100 MB takes a noticeable part of a short predict. Any change of a tensor (in
    place: its version counter; replaced: its storage) computes it again."""
    try:
        stamp = tuple(
            (name, t.data_ptr(), t._version, t.dtype, tuple(t.shape))
            for name, t in model.state_dict().items()
        )
    except RuntimeError:  # inference tensors carry no version counter: no memo
        return weights_fingerprint(model)
    known = _FINGERPRINTS.get(model)
    if known is not None and known[0] == stamp:
        return known[1]
    digest = weights_fingerprint(model)
    _FINGERPRINTS[model] = (stamp, digest)
    return digest


def cache_home(loaded: LoadedModel) -> RunDir | None:
    """Where the caches of ``loaded`` go (``backend.json``, the ONNX file the backends run,
    ``openvino-cache/``): its run folder; where that cannot be written (a read-only mount, a
    shared model store), the user's cache folder under a key of the weights and metadata, so
    that two models never share one. None: no run folder, or neither can be written (the
    caches are then skipped)."""
    run = loaded.run
    if run is None:
        return None
    if run.writable():
        return run
    blob = fingerprint(loaded.model) + loaded.meta.dumps()
    home = RunDir.model_cache(hashlib.sha256(blob.encode()).hexdigest()[:16])
    try:
        home.path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return home if home.writable() else None


def stale_reason(recorded: str | None, path: Path, loaded: LoadedModel) -> str | None:
    """Why the export at ``path``, which records the weights fingerprint ``recorded``, does
    not hold the weights of ``loaded``, or None when it does."""
    if recorded is None:
        # An export from before the fingerprint was stored: judged by age, as make would.
        try:
            older = path.stat().st_mtime < loaded.source.stat().st_mtime
        except OSError:  # weights not from a file (torchvision): nothing to compare with
            return None
        return f"{path} is older than {loaded.source}" if older else None
    if recorded != fingerprint(loaded.model):
        return f"{path} was exported from other weights than {loaded.source} holds now"
    return None


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy with every BatchNorm folded into the convolution before it.

    Uses PyTorch's own FX pass; on this project's CPU benchmark it raises bf16 resnet18
    throughput by about a fifth (one pass over each activation less). Models FX cannot trace
    are returned unchanged."""
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    if isinstance(model, torch.jit.ScriptModule):  # a TorchScript export: FX cannot trace it
        return model
    try:
        return fuse(model)
    except (torch.fx.proxy.TraceError, TypeError):
        return model


@register_backend
class TorchBackend(Backend):
    """PyTorch eager, BatchNorm folded, channels_last, autocast to the chosen precision."""

    name = "torch"
    channels_last = True

    def __init__(
        self,
        loaded: LoadedModel,
        device: str | torch.device | None = None,
        precision: str = "auto",
        path: str | os.PathLike | None = None,
    ) -> None:
        if path is not None:
            raise ConfigError(
                "an exported model file is for the onnx backends; torch runs the weights"
            )
        self.device = as_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.parallel = self.device.type == "cpu"
        self.model = model_on(fold_batchnorm(loaded.model), self.device)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.precision, self.device):
            out = self.model(batch)
        return out.float().cpu()


def _onnxruntime_read(path: Path):
    session = onnx_session(path)
    return session, session.get_modelmeta().custom_metadata_map.get(WEIGHTS_KEY)


@register_backend
class OnnxBackend(Backend):
    """onnxruntime on the CPU, running the fp32 graph that ``export`` wrote (and checked)."""

    name = "onnx"
    precision = "fp32"
    export_flags: tuple[str, ...] = ()  # what `resnetlab export RUN --format onnx` needs
    # A stale export in the run's own place is rebuilt from the weights (``export`` would
    # write the same file); one given by path is the user's, and is refused instead.
    rebuild_when_stale = True

    def __init__(
        self, loaded: LoadedModel, path: str | os.PathLike | None = None, **_: object
    ) -> None:
        # The exported graph fixes its own precision (a device or precision asked for does
        # not apply); onnxruntime runs it on the CPU.
        self.device = torch.device("cpu")
        self.session = self._checked_session(loaded, Path(path) if path else None)

    @classmethod
    def default_path(cls, run: RunDir) -> Path:
        return run.onnx

    def _checked_session(self, loaded: LoadedModel, given: Path | None):
        """The onnxruntime session, checked against the weights the model holds now; a stale
        file is rebuilt or refused (see ``rebuild_when_stale``), never used silently."""
        return self._checked(loaded, given, _onnxruntime_read)[1]

    def _export_path(self, loaded: LoadedModel, given: Path | None) -> Path:
        """The export to run: ``given``, or the run's own, written there when missing; for a
        run folder that cannot be written, the one in its cache folder (``cache_home``)."""
        if given is not None:
            return given
        own = self.default_path(loaded.home)
        if self.rebuild_when_stale and loaded.run is not None:
            # The fp32 graph is what `export` would write: made on first use, in the run
            # folder or in the cache folder that stands in for a read-only one.
            home = cache_home(loaded)
            target = self.default_path(home) if home is not None else None
            if target is not None and (target.is_file() or not own.is_file()):
                if not target.is_file():
                    log.info("exporting %s for the %s backend", target, self.name)
                    export_onnx(loaded, target)
                return target
            if not own.is_file():
                raise MissingFileError(
                    f"{own}: no ONNX model, and neither {loaded.run} nor {user_cache_dir()} "
                    "can be written to export one; use --backend torch"
                )
        elif not own.is_file():
            what = "int8 ONNX" if self.precision == "int8" else "ONNX"
            raise MissingFileError(f"{own}: no {what} model; run `{self._again(loaded)}` first")
        return own

    def _again(self, loaded: LoadedModel, given: Path | None = None) -> str:
        """The command that writes the export again."""
        words = ["resnetlab", "export", loaded.home, "--format", "onnx"]
        if given is not None:
            return shell_command(*words, "--out", given)
        return shell_command(*words, *self.export_flags)

    def _checked(self, loaded: LoadedModel, given: Path | None, read: Callable):
        """(path, opened model) of the export to run, checked as above; ``read(path)`` opens
        it and returns (opened model, the weights fingerprint it records or None)."""
        path = self._export_path(loaded, given)
        opened, recorded = read(path)
        reason = stale_reason(recorded, path, loaded)
        if reason is None:
            return path, opened
        if given is None and self.rebuild_when_stale and is_resnetlab_export(path):
            home = cache_home(loaded)
            if home is None:
                raise StaleExportError(
                    f"{reason}; neither {loaded.run} nor {user_cache_dir()} can be written to "
                    "export it again: use --backend torch"
                )
            target = self.default_path(home)
            log.warning(
                "%s; exporting it again%s",
                reason,
                "" if target == path else f" into {target} ({loaded.run} cannot be written)",
            )
            export_onnx(loaded, target)
            return target, read(target)[0]
        raise StaleExportError(f"{reason}; re-run `{self._again(loaded, given)}`")

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return onnx_logits(self.session, batch)


@register_backend
class OnnxInt8Backend(OnnxBackend):
    """onnxruntime running the static int8 model that ``export --int8`` wrote."""

    name = "onnx-int8"
    precision = "int8"
    export_flags = ("--int8",)
    # Its accuracy change was measured when it was written: a stale one is never rebuilt
    # without measuring again.
    rebuild_when_stale = False

    @classmethod
    def default_path(cls, run: RunDir) -> Path:
        return run.onnx_int8


OPENVINO_CACHE = RunDir.OPENVINO_CACHE  # in the run's cache home: one folder per key


def _openvino_read(core, path: Path):
    """The OpenVINO model of the ONNX file at ``path`` and the weights fingerprint it
    records (OpenVINO keeps ONNX metadata in its rt_info under "framework")."""
    check_external_data(path)
    model = core.read_model(str(path))
    where = ["framework", WEIGHTS_KEY]
    return model, (model.get_rt_info(where).astype(str) if model.has_rt_info(where) else None)


def _prune(cache: Path) -> None:
    """Make ``cache``, and remove this backend's folders of other keys (earlier weights or
    exports): the run folder keeps one compiled model per backend."""
    backend = cache.name.rsplit("-", 1)[0]
    for old in cache.parent.glob(f"{backend}-*") if cache.parent.is_dir() else ():
        if old != cache and old.name.rsplit("-", 1)[0] == backend:
            shutil.rmtree(old, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)


def _openvino():
    return require("openvino", "the openvino backends")


@register_backend
class OpenVinoBackend(OnnxBackend):
    """OpenVINO's CPU runtime, compiling the same checked fp32 ONNX graph as ``onnx``."""

    name = "openvino"
    precision = "fp32"
    hint = "f32"  # OpenVINO would pick bf16 by itself on CPUs that have it: say f32

    def __init__(
        self, loaded: LoadedModel, path: str | os.PathLike | None = None, **_: object
    ) -> None:
        ov = _openvino()
        self.device = torch.device("cpu")
        given = Path(path) if path else None
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": self.hint,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        }
        # From the file's path and a cache folder, OpenVINO loads the compiled model without
        # reading the graph again or compiling it: the check (an onnxruntime session before)
        # and the compilation took 0.4 s of a 2.6 s predict of 128 images (resnet18, 2 cores).
        onnx_path = self._export_path(loaded, given)
        cache = self._cache_dir(loaded, given, onnx_path, ov)
        if cache is None or not any(cache.glob("*.blob")):
            onnx_path, model = self._checked(loaded, given, lambda p: _openvino_read(core, p))
            cache = self._cache_dir(loaded, given, onnx_path, ov)  # a rebuilt file: a new key
            if cache is None:
                self.compiled = core.compile_model(model, "CPU", config)
                return
            _prune(cache)
        config["CACHE_DIR"] = str(cache)
        self.compiled = core.compile_model(str(onnx_path), "CPU", config)

    def _cache_dir(
        self, loaded: LoadedModel, given: Path | None, onnx_path: Path, ov
    ) -> Path | None:
        """Where OpenVINO keeps the compiled model for the run's own export, or None (a file
        given by path, no run folder, or no folder that can be written: compiled each time).

        The key holds the weights' fingerprint and the ONNX file's identity (size, mtime,
        inode), so a blob is only found for the exact file it was compiled from after the
        checks of ``_checked`` (weights, external data); a re-export or other weights get a
        new folder, never a stale blob. Precision, threads, CPU and version complete it:
        OpenVINO's own blob name does not cover every setting (it is the same for f32 and
        bf16 of one file)."""
        home = cache_home(loaded) if given is None else None
        if home is None:
            return None
        from ..core.device import cpu_model

        st = onnx_path.stat()
        key = {
            "weights": fingerprint(loaded.model),
            "hint": self.hint,
            "onnx": [st.st_size, st.st_mtime_ns, st.st_ino],
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "openvino": ov.get_version(),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return home.openvino_cache / f"{self.name}-{digest}"

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        request = self.compiled.create_infer_request()  # one per call: callers may be threads
        request.infer({0: x})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


@register_backend
class OpenVinoBf16Backend(OpenVinoBackend):
    """OpenVINO in bf16, for CPUs with native bf16 (AVX512-BF16, AMX)."""

    name = "openvino-bf16"
    precision = "bf16"
    hint = "bf16"


def run_streams(count: int, streams: int, work: Callable[[int], T]) -> list[T]:
    """``[work(0), ..., work(count - 1)]``, computed by ``streams`` threads side by side, each
    with its share of the intra-op threads.

    Each stream takes the next index and runs ``work`` on it, so no thread waits at the
    barrier of a convolution while decoding takes its core (the throughput mode of OpenVINO
    and ``torch.backends.xeon.run_cpu``). An error in one stream (or Ctrl-C in the caller)
    ends the others after the item they are on."""
    threads = torch.get_num_threads()
    per_stream = max(1, threads // streams)
    next_index = itertools.count()  # next() on it is atomic: each item goes to one stream
    done: list = [None] * count
    stop = threading.Event()

    def stream() -> None:
        # Sets this thread's OpenMP team size; the calling thread's stays as it was.
        torch.set_num_threads(per_stream)
        try:
            while not stop.is_set() and (n := next(next_index)) < count:
                done[n] = work(n)
        except BaseException:
            stop.set()
            raise

    try:
        with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="stream") as pool:
            futures = [pool.submit(stream) for _ in range(streams)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()
                raise
    finally:
        # torch also keeps the last count as the default for threads started later:
        # put back this thread's.
        torch.set_num_threads(threads)
    return done
