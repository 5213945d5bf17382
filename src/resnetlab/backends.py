"""Inference backends: one small class per runtime behind one interface, and beside them the
scheduling that runs batches side by side on the CPU.

A backend takes a preprocessed float batch (N, C, H, W) and returns float32 logits on the CPU.
Adding one is a class with a ``name`` and ``logits``, registered with ``@register_backend``;
``predict`` and ``serve`` then accept it as ``--backend NAME``.
"""

from __future__ import annotations

import abc
import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, TypeVar

import torch

from .bundle import LoadedModel, model_on
from .device import as_device, autocast, resolve_precision
from .errors import ConfigError, MissingFileError, StaleExportError
from .export import export_onnx, is_resnetlab_export, onnx_logits, onnx_session, stale_reason
from .run import RunDir

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


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy with every BatchNorm folded into the convolution before it.

    Uses PyTorch's own FX pass; on this project's CPU benchmark it raises bf16 resnet18
    throughput by about a fifth (one pass over each activation less). Models FX cannot trace
    are returned unchanged."""
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
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


@register_backend
class OnnxBackend(Backend):
    """onnxruntime on the CPU, running the fp32 graph that ``export`` wrote (and checked)."""

    name = "onnx"
    precision = "fp32"
    export_flags = ""  # what `resnetlab export RUN --format onnx` needs to write this file
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
        return self._checked(loaded, given)[1]

    def _checked(self, loaded: LoadedModel, given: Path | None):
        """(path, onnxruntime session) of the export to run, checked as above."""
        home = loaded.home
        again = f"resnetlab export {home} --format onnx{self.export_flags}"
        path = given or self.default_path(home)
        if given is None and not path.is_file():
            if self.rebuild_when_stale and loaded.run is not None:
                # The fp32 graph is what `export` would write: made here on first use.
                log.info("exporting %s for the %s backend", path, self.name)
                export_onnx(loaded, path)
            else:
                what = "int8 ONNX" if self.precision == "int8" else "ONNX"
                raise MissingFileError(f"{path}: no {what} model; run `{again}` first")
        session = onnx_session(path)
        reason = stale_reason(session, path, loaded)
        if reason is None:
            return path, session
        if given is None and self.rebuild_when_stale and is_resnetlab_export(path):
            log.warning("%s; exporting it again", reason)
            export_onnx(loaded, path)
            return path, onnx_session(path)
        if given is not None:
            again = f"resnetlab export {home} --format onnx --out {path}"
        raise StaleExportError(f"{reason}; re-run `{again}`")

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return onnx_logits(self.session, batch)


@register_backend
class OnnxInt8Backend(OnnxBackend):
    """onnxruntime running the static int8 model that ``export --int8`` wrote."""

    name = "onnx-int8"
    precision = "int8"
    export_flags = " --int8"
    # Its accuracy change was measured when it was written: a stale one is never rebuilt
    # without measuring again.
    rebuild_when_stale = False

    @classmethod
    def default_path(cls, run: RunDir) -> Path:
        return run.onnx_int8


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError(
            "the openvino backends need the openvino package: pip install 'resnetlab[openvino]'"
        ) from None
    return openvino


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
        onnx_path, _session = self._checked(loaded, Path(path) if path else None)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}  # fmt: skip
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)

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
