"""Prediction: top-k labels for images, batched, with torch or onnxruntime.

The preprocessing comes from the model's metadata (input size, mean/std, preset), the same
evaluation transform that validation used during training, so predictions match evaluation.
"""

from __future__ import annotations

import contextlib
import glob
import operator
import os
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from ..core.errors import ConfigError
from ..data.images import (
    ImageDecodeError,
    from_pil,
    is_image_file,
    is_junk,
    open_image,
    skip_reason,
)
from ..data.transforms import BatchTransform, file_transform, stack_images
from ..tasks import Task, task_of
from .backends import check_backend, create_backend, run_streams
from .loading import LoadedModel, load_model, pretrained_model
from .tta import check_tta, tta_logits

__all__ = ["Predictor", "build_predictor", "check_topk", "expand_inputs"]

# Streams beyond this share too few threads each, and hold a batch of activations apiece.
MAX_AUTO_STREAMS = 4
NO_MATCH = "no file matches this pattern"
STDIN = "-"  # an input read from standard input
# Standard input and pipes are read whole before decoding; more than this is not an image.
MAX_STREAM_BYTES = 256 * 2**20


class Predictor:
    """``Predictor("runs/x")``; ``predict_paths([...])``, ``predict_images([...])``.

    Thread-safe: ``serve`` calls it from several request handlers at once.

    ``tta`` "flip", "crops" or "flip-crops": each batch's logits are the mean over 2, 5 or 10
    views of it (as many passes of the model), calibrated once afterwards
    (``resnetlab.inference.tta``).
    """

    def __init__(
        self,
        source: str | os.PathLike | LoadedModel,
        backend: str = "auto",
        device: str | torch.device | None = None,
        precision: str = "auto",
        batch_size: int = 32,
        onnx_path: str | os.PathLike | None = None,
        decode_threads: int = 2,
        streams: int | None = None,
        tta: str = "none",
    ) -> None:
        if backend != "auto":
            check_backend(backend)
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        if streams is not None and streams < 1:
            raise ConfigError(f"--streams must be at least 1, got {streams}")
        self.loaded = source if isinstance(source, LoadedModel) else load_model(source)
        meta = self.loaded.meta
        self.meta, self.classes = meta, self.loaded.classes
        self.channels, self.input_size, self.preset = meta.in_chans, meta.size, meta.preset
        self.batch_size = batch_size
        self.decode_threads = max(1, decode_threads)
        self.streams = streams
        self.tta = check_tta(tta)  # test-time augmentation: logits averaged over views (tta.py)
        self.choice = None  # what --backend auto measured and chose
        if backend == "auto":
            from .choice import choose_backend

            self.choice = choose_backend(self.loaded, device, precision, min(batch_size, 16))
            backend, precision = self.choice.backend, self.choice.precision
            device = "cpu" if backend != "torch" else device
        self.backend = create_backend(backend, self.loaded, device, precision, onnx_path)
        self._decode_tf = file_transform(
            self.preset,
            self.input_size,
            train=False,
            resize_size=meta.resize_size,
            interpolation=meta.interpolation,
        )
        # No JPEG is decoded at a reduced scale (draft mode): training, evaluate, serve, an
        # image given in memory and a client of the export decode at full scale, and a draft
        # decode changes the probabilities (up to 0.07 on photos), so no door uses it.
        self.min_side = None
        self._batch_tf = BatchTransform(
            self.preset,
            self.input_size,
            meta.mean,
            meta.std,
            train=False,
            geometric=True,
            channels_last=self.backend.channels_last,
            resize_size=meta.resize_size,
            interpolation=meta.interpolation,
        )
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def precision(self) -> str:
        return self.backend.precision

    @property
    def name(self) -> str:
        return self.meta.model

    # ------------------------------------------------------------------------- inference

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """Decoded image -> uint8 (C, H, W) at the model's input size."""
        return self._decode_tf(img)

    def logits(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 batch (N, C, H, W) -> float32 logits on the CPU."""
        return self._logits(batch_uint8, self._lock)

    def _logits(self, batch_uint8: torch.Tensor, lock) -> torch.Tensor:
        x = self._batch_tf(batch_uint8.to(self.device))
        # One call at a time uses every intra-op thread; only the streams of predict_paths
        # run side by side (no lock), each with its share of the threads.
        with lock:
            return tta_logits(self.backend.logits, x, self.tta)

    @property
    def temperature(self) -> float | None:
        """The run's calibration temperature (``model.json``); None: uncalibrated."""
        return self.meta.temperature

    @property
    def multilabel(self) -> bool:
        """A multi-label model: independent sigmoid probabilities, a threshold per class."""
        return self.meta.multilabel

    @property
    def task(self) -> Task:
        """Single- or multi-label: how logits become probabilities and answers."""
        return task_of(self.meta)

    @property
    def thresholds(self) -> list[float]:
        """Multi-label: each class's decision threshold (0.5 where the run chose none)."""
        return self.task.thresholds(self.meta)

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from logits, through the run's temperature when it has one: the
        graph (and every backend) returns raw logits, so the one division happens here.
        Multi-label: the sigmoid of each logit."""
        return self.task.probabilities(logits, self.meta.temperature)

    def probabilities(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        return self.calibrated(self.logits(batch_uint8))

    def topk_rows(self, probs: torch.Tensor, k: int | None = None) -> list[list[dict]]:
        """The ``k`` (default 5) most probable classes of each row; a ``k`` above the number of
        classes gives all of them. Multi-label: every label at or above its threshold, most
        probable first (at most ``k`` when given; each with its ``threshold``)."""
        return self.task.rows(probs, self.classes, self.meta, check_topk(k))

    def predict_images(
        self, images: Sequence[Image.Image], topk: int | None = None
    ) -> list[list[dict]]:
        check_topk(topk)
        rows: list[list[dict]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = stack_images([self.preprocess(from_pil(im, self.channels)) for im in chunk])
            rows += self.topk_rows(self.probabilities(batch), topk)
        return rows

    def _decode(self, path) -> tuple[torch.Tensor | None, str | None]:
        try:
            source = read_stream(path) if is_stream(path) else path
            return self.preprocess(open_image(source, self.channels)), None
        except ImageDecodeError as exc:
            # A pattern kept by expand_inputs because nothing matched it.
            if glob.has_magic(str(path)) and not os.path.lexists(path):
                return None, NO_MATCH
            return None, exc.reason

    def stream_count(self, batches: int) -> int:
        """How many batches :meth:`predict_paths` runs side by side on the CPU.

        Each stream decodes its batch and runs the model with its share of the intra-op
        threads, so no thread waits at the barrier of a convolution while decoding takes its
        core (see ``backends.run_streams``). One batch, or a backend that is not
        ``parallel`` (a GPU, onnxruntime with its own thread pool), runs as one stream."""
        if self.streams is not None:
            wanted = self.streams
        elif not self.backend.parallel:
            wanted = 1
        else:
            wanted = min(torch.get_num_threads(), MAX_AUTO_STREAMS)
        return max(1, min(wanted, batches))

    def _rows(self, chunk, decoded, topk: int, lock) -> list[dict]:
        ok = [i for i, (t, _) in enumerate(decoded) if t is not None]
        results = {}
        if ok:
            logits = self._logits(stack_images([decoded[i][0] for i in ok]), lock)
            results = dict(zip(ok, self.topk_rows(self.calibrated(logits), topk)))
        return [
            {"path": str(p), "topk": results.get(i, []), "error": decoded[i][1]}
            for i, p in enumerate(chunk)
        ]

    def predict_paths(
        self, paths: Sequence[str | os.PathLike], topk: int | None = None
    ) -> list[dict]:
        """One row per path, in order: ``{"path", "topk", "error"}``; a bad file gets an error
        row and the others still get predictions (``iter_predict_paths`` gives them as each
        batch completes).

        With one stream, the files of the next batch are decoded in background threads while
        the model runs on the current one; with several (see :meth:`stream_count`), each
        stream takes the next batch, decodes it and runs the model on it."""
        return list(self.iter_predict_paths(paths, topk))

    def iter_predict_paths(
        self, paths: Sequence[str | os.PathLike], topk: int | None = None
    ) -> Iterator[dict]:
        """The rows of :meth:`predict_paths`, in order, each batch's as soon as it is done (and
        earlier ones before later ones): a caller writes them out as they come, and holds none.
        Closing the iterator early stops the work after the batches in progress."""
        check_topk(topk)  # before any file is decoded
        return self._iter_rows(paths, topk)

    def _iter_rows(self, paths: Sequence, topk: int | None) -> Iterator[dict]:
        chunks = [paths[i : i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        streams = self.stream_count(len(chunks))
        if streams > 1:
            # Batches of equal size, as many as a multiple of the streams, so that no stream
            # ends on a batch alone (with its share of the threads) while the others idle.
            n = min(len(paths), -(-len(chunks) // streams) * streams)
            bounds = [round(i * len(paths) / n) for i in range(n + 1)]
            chunks = [paths[a:b] for a, b in zip(bounds, bounds[1:])]
            yield from self._predict_streams(chunks, topk, streams)
            return
        with ThreadPoolExecutor(max_workers=self.decode_threads) as pool:
            pending = pool.map(self._decode, chunks[0]) if chunks else None
            for n, chunk in enumerate(chunks):
                decoded = list(pending)
                if n + 1 < len(chunks):
                    pending = pool.map(self._decode, chunks[n + 1])
                yield from self._rows(chunk, decoded, topk, self._lock)

    def _predict_streams(self, chunks: list, topk: int, streams: int) -> Iterator[dict]:
        """``run_streams`` in a thread of its own; its batches handed over in order as each is
        done, so that none waits for the slowest of the others to be written out."""
        done: dict[int, list[dict]] = {}
        ready = threading.Condition()
        cancelled = threading.Event()
        failed: list[BaseException] = []
        finished = False

        def rows(n: int) -> None:
            if cancelled.is_set():  # the caller has gone: stop after the batches in progress
                raise _Cancelled
            decoded = [self._decode(p) for p in chunks[n]]
            batch = self._rows(chunks[n], decoded, topk, contextlib.nullcontext())
            with ready:
                done[n] = batch
                ready.notify_all()

        def run() -> None:
            nonlocal finished
            try:
                run_streams(len(chunks), streams, rows)
            except _Cancelled:
                pass
            except BaseException as exc:  # raised again in the caller's thread
                failed.append(exc)
            finally:
                with ready:
                    finished = True
                    ready.notify_all()

        worker = threading.Thread(target=run, name="predict-streams", daemon=True)
        worker.start()
        try:
            for n in range(len(chunks)):
                with ready:
                    while n not in done and not finished:
                        ready.wait()
                    if n not in done:
                        raise failed[0] if failed else RuntimeError("prediction streams ended")
                    batch = done.pop(n)
                yield from batch
        finally:
            cancelled.set()
            worker.join()


class _Cancelled(Exception):
    """The reader of ``iter_predict_paths`` stopped: the streams end."""


def check_topk(k: int | None) -> int | None:
    """``k`` when it is a whole number of at least 1 (None: the default, 5 classes or every
    label above its threshold); otherwise a ``ValueError`` that says what to give."""
    if k is None:
        return None
    try:
        n = operator.index(k)
    except TypeError:
        n = 0
    if n < 1:
        raise ConfigError(
            f"topk must be a whole number of at least 1, got {k!r}; give --topk 1 or more "
            "(more than the model's classes gives all of them)"
        )
    return n


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    want = "RGB" if channels == 3 else "L"
    return img if img.mode == want else img.convert(want)


def is_stream(path) -> bool:
    """Standard input (``-``) or a file that is not a regular one: ``/dev/stdin`` when data is
    piped, ``<(curl ...)``, a named pipe. These are read as a stream; their size says 0."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def read_stream(path) -> bytes:
    """The bytes of standard input (``-``) or of a pipe, up to ``MAX_STREAM_BYTES``."""
    if str(path) == STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            raise ImageDecodeError(
                path,
                "standard input is a terminal: pipe an image in, "
                "e.g. resnetlab predict RUN - < photo.jpg",
            )
        data = sys.stdin.buffer.read(MAX_STREAM_BYTES + 1)
    else:
        try:
            with open(path, "rb") as f:
                if f.isatty():
                    raise ImageDecodeError(path, "a terminal, not an image")
                data = f.read(MAX_STREAM_BYTES + 1)
        except OSError as exc:
            raise ImageDecodeError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_STREAM_BYTES:
        raise ImageDecodeError(
            path,
            f"more than {MAX_STREAM_BYTES // 2**20} MiB piped in; not an image",
            kind="too_large",
        )
    if not data:
        raise ImageDecodeError(path, "nothing was piped in (0 bytes)")
    return data


def _broken_link(path: str | os.PathLike) -> bool:
    return os.path.islink(path) and not os.path.exists(path)


def expand_inputs(items: Iterable[str], skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Files as given; folders walked recursively for images (junk skipped); globs expanded.

    A name that matches nothing is kept, so it gets its own error row: a missing file says
    so, a pattern that matches no file says ``no file matches this pattern``; so is a link
    (named as an image) whose target is gone. ``skipped`` receives (path, reason) for each
    file in a folder left out because its name is not an image's."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found, left_out = [], []
            for f in p.rglob("*"):
                if is_junk(f, p) or not (f.is_file() or _broken_link(f)):
                    continue
                (found if is_image_file(f) else left_out).append(str(f))
            out += sorted(found)
            if skipped is not None:
                skipped += [(f, skip_reason(f)) for f in sorted(left_out)]
        elif not p.exists() and glob.has_magic(item):
            matches = sorted(
                f for f in glob.glob(item, recursive=True) if os.path.isfile(f) or _broken_link(f)
            )
            out += matches or [item]
        else:
            out.append(item)
    return out


def build_predictor(
    run: str | None,
    model: str | None = None,
    weights: str | None = None,
    **kwargs,
) -> Predictor:
    """From a run (folder / file), or from ``model`` + ``weights`` with no run at all."""
    if run:
        return Predictor(run, **kwargs)
    if not (model and weights):
        raise ConfigError("give a RUN folder or model file, or --model NAME --weights SOURCE")
    return Predictor(pretrained_model(model, weights), **kwargs)
