"""The HTTP service: POST /predict, POST /explain, GET /health, GET /model, GET / (the page)."""

from __future__ import annotations

import asyncio
import copy
import errno
import logging
import socket
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect

from ..data.images import DECODE_FORMATS, ImageDecodeError, open_image
from ..errors import ConfigError
from ..predict import Predictor
from .batcher import MicroBatcher, QueueFull

log = logging.getLogger("resnetlab.serve")
PAGE = Path(__file__).with_name("page.html")
# Formats a browser may send that we never decode: answered 415, not 400.
REFUSED_TYPES = ("application/pdf", "application/postscript", "image/svg+xml", "text/")
REFUSED_MAGIC = (b"%PDF", b"%!PS", b"\xc5\xd0\xd3\xc6", b"<svg", b"<?xml", b"8BPS")
# A client that sends its whole body before reading the answer (urllib, requests) gets a
# connection reset, not the 413, when the server closes while the body is still arriving. So
# the rest of a refused body is read and dropped, up to this many bytes past the cap, without
# keeping it (the lingering close of nginx and Apache); a larger body is cut off.
DRAIN_BYTES = 64 * 2**20


# fp32 runtimes give the same probabilities alone or batched to rounding; reduced precision
# changes with the batch's kernel choice.
BATCH_TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-2, "int8": 1e-2}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        self.status, self.message, self.headers = status, message, headers or {}


async def read_capped(request: Request, cap: int, drain: int = DRAIN_BYTES) -> bytes:
    """The body, refused with 413 as soon as it passes ``cap`` bytes (chunked uploads too).

    Before the 413, up to ``drain`` more bytes of the body are read and dropped, so that a
    client still sending it can read the answer; memory holds one chunk at a time."""
    length = request.headers.get("content-length")
    stream = request.stream()
    if length is not None:
        if not length.isdigit():
            raise HTTPError(400, "invalid Content-Length")
        if int(length) > cap:
            # A client that asked `Expect: 100-continue` has not sent the body and waits for
            # this answer; reading would tell it to send everything first.
            waiting = request.headers.get("expect", "").lower() == "100-continue"
            if not waiting and int(length) <= cap + drain:
                await _discard(stream, drain)
            raise HTTPError(413, f"body of {int(length):,} bytes exceeds the {cap:,}-byte limit",
                            {"Connection": "close"})  # fmt: skip
    chunks, total = [], 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > cap:
                await _discard(stream, cap + drain - total)
                raise HTTPError(
                    413, f"body exceeds the {cap:,}-byte limit", {"Connection": "close"}
                )
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPError(400, "the client closed the connection before the body ended") from None
    return b"".join(chunks)


async def _discard(stream, limit: int) -> None:
    """Read and drop what is left of ``stream``, at most ``limit`` bytes."""
    seen = 0
    try:
        async for chunk in stream:
            seen += len(chunk)
            if seen > limit:
                return
    except ClientDisconnect:  # nobody left to answer
        return


async def image_bytes(request: Request, body: bytes) -> tuple[bytes, str | None]:
    """The uploaded file from a multipart form (first file field), or the raw body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream()).parse()
        except MultiPartException as exc:
            raise HTTPError(400, f"malformed multipart body: {exc.message}") from None
        for _, value in form.multi_items():
            if hasattr(value, "read"):
                return await value.read(), value.content_type
        raise HTTPError(400, "multipart body has no file field (send the image as 'file')")
    return body, ctype or None


def _refused(data: bytes, ctype: str | None) -> bool:
    if ctype and any(ctype.startswith(t) for t in REFUSED_TYPES):
        return True
    head = data[:64].lstrip()
    return any(head.startswith(m) for m in REFUSED_MAGIC)


class RequestLog:
    """One log line per request. A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs
    about a millisecond a request, as much as running this project's small models."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log.info("%s %s %d %.1fms", scope["method"], scope["path"], status[0],
                     1000 * (time.perf_counter() - start))  # fmt: skip


def create_app(
    predictor: Predictor,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 64,
    max_body: int = 10 * 2**20,
    max_pixels: int = 40_000_000,
    decode_threads: int = 2,
) -> FastAPI:
    from concurrent.futures import ThreadPoolExecutor

    decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
    state: dict = {"arriving": 0}  # requests being read or decoded, not yet queued

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(predictor.probabilities, max_batch, max_wait_ms, max_queue,
                               more_coming=lambda: state["arriving"] > 0)  # fmt: skip
        batcher.start()
        state["batcher"] = batcher
        yield
        await batcher.stop()
        decoder.shutdown(wait=True)

    app = FastAPI(title="resnetlab", lifespan=lifespan, docs_url="/docs", redoc_url=None)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    app.add_middleware(RequestLog)

    def decode(data: bytes):
        img = open_image(
            data, predictor.channels, max_pixels=max_pixels, min_side=predictor.min_side
        )
        return predictor.preprocess(img)

    @app.post("/predict")
    async def predict(request: Request, topk: int | None = None):
        state["arriving"] += 1
        try:
            # The body is read before any refusal, so that a client still sending it sees the
            # answer instead of a connection reset.
            body = await read_capped(request, max_body)
            if topk is not None and topk < 1:
                raise HTTPError(
                    400, f"topk must be at least 1, got {topk} (a topk above the "
                    f"{len(predictor.classes)} classes gives all of them)",
                )  # fmt: skip
            image = await _decode_upload(request, body)
        finally:
            state["arriving"] -= 1
        try:
            probs = await state["batcher"].submit(image)
        except QueueFull:
            raise HTTPError(503, "server busy: too many requests queued, retry shortly",
                            {"Retry-After": "1"}) from None  # fmt: skip
        # topk above the number of classes means all of them (default 5). For a multi-label
        # model: every label at or above its threshold (at most topk when given).
        rows = predictor.topk_rows(probs.unsqueeze(0), topk)[0]
        if predictor.multilabel:
            return {"topk": rows, "labels": [r["label"] for r in rows], "model": predictor.name}
        return {"topk": rows, "model": predictor.name}

    async def _decode_upload(request: Request, body: bytes):
        data, ctype = await image_bytes(request, body)
        if not data:
            raise HTTPError(400, "empty upload: send an image as the body or as 'file'")
        if _refused(data, ctype):
            raise HTTPError(415, f"unsupported media type; send one of {', '.join(DECODE_FORMATS)}")
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(decoder, decode, data)
        except ImageDecodeError as exc:
            if exc.kind == "too_large":
                raise HTTPError(413, exc.reason) from None
            raise HTTPError(400, f"cannot decode the image: {exc.reason}") from None
        return image

    def explainer():
        """Built at the first /explain: a CPU copy of the weights, because Captum hooks the
        layer it explains and /predict must never run through those hooks."""
        if "explainer" not in state:
            import torch

            from ..explain import Explainer

            loaded = copy.copy(predictor.loaded)
            model = copy.deepcopy(loaded.model).float()
            loaded.model = model.to("cpu", memory_format=torch.contiguous_format)
            state["explainer"] = Explainer.from_loaded(loaded)
        return state["explainer"]

    def run_explain(image, class_name: str | None):
        ex = explainer()
        target = None if class_name is None else ex.class_index(class_name)
        # The upload is already the model's input (the same evaluation transform).
        e = ex.explain_batch(image[None], target)[0]
        return e.png(), e

    @app.post("/explain")
    async def explain_upload(request: Request):
        """A Grad-CAM overlay (PNG) of the uploaded image for its predicted class, or for
        ``?class=NAME``; the class, its index and probability in X-Class (URL-quoted, as
        headers carry Latin-1 only), X-Class-Index and X-Prob."""
        from urllib.parse import quote

        state["arriving"] += 1
        try:
            body = await read_capped(request, max_body)
            image = await _decode_upload(request, body)
        finally:
            state["arriving"] -= 1
        loop = asyncio.get_running_loop()
        try:
            png, e = await loop.run_in_executor(
                None, run_explain, image, request.query_params.get("class")
            )
        except ConfigError as exc:
            # No Captum is the server's to fix (501); an unknown class the client's (400).
            status = 501 if "captum" in str(exc) else 400
            raise HTTPError(status, str(exc)) from None
        headers = {"X-Class": quote(e.label, safe=""), "X-Class-Index": str(e.index),
                   "X-Prob": f"{e.prob:.6f}", "Cache-Control": "no-store"}  # fmt: skip
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/health")
    async def health():
        b = state.get("batcher")
        return {"status": "ok", "queued": b.queue.qsize() if b else 0}

    @app.get("/model")
    async def model_info():
        m = predictor.meta
        return {
            "model": m.model, "classes": predictor.classes,
            "num_classes": len(predictor.classes), "input_size": m.input_size,
            "mean": m.mean, "std": m.std,
            # probabilities are softmax(logits / temperature); None: uncalibrated
            "temperature": m.temperature,
            # multilabel: one sigmoid probability per class, a label shown from its threshold
            "task": "multilabel" if m.multilabel else "multiclass",
            "thresholds": predictor.thresholds if m.multilabel else None,
            "precision": predictor.precision, "backend": predictor.backend.name,
            # how far one image's probabilities may move between a lone and a batched call
            "tolerance": BATCH_TOLERANCE.get(predictor.precision, 1e-2),
            "max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_body_bytes": max_body,
        }  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``; a bad or busy port is a one-line ``ValueError``.

    The server binds here, before the URL is printed, so that the URL is only shown once it
    answers, and a busy port is said plainly instead of in uvicorn's traceback."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number; give one from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not protocol 0: asyncio sets TCP_NODELAY only on sockets whose ``proto`` says
    # TCP, and accepted connections inherit it. Without it every response on a kept-alive
    # connection waited about 40 ms for Nagle's algorithm and the peer's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn does: a restarted server can take its port back at once (TIME_WAIT); a port
    # another program listens on is still refused.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} is in use; pick another with --port") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"port {port} needs administrator rights here; pick one above 1023 with --port"
            ) from None
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host} port {port}: {reason}; check --host") from None
    return sock


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 64,
    max_body_mb: float = 10.0,
    workers: int = 2,
    device: str | None = None,
) -> None:
    import uvicorn

    # The port first: a typo or a busy port is reported before the model is loaded.
    sock = listen(host, port)
    try:
        predictor = Predictor(run, backend=backend, precision=precision, batch_size=max_batch,
                              device=device)  # fmt: skip
        if predictor.choice is not None:
            print(f"resnetlab serve: {predictor.choice.note}", file=sys.stderr, flush=True)
        import torch

        c, h, w = predictor.meta.input_size
        predictor.probabilities(torch.zeros(max_batch, c, h, w, dtype=torch.uint8))  # warm-up
        app = create_app(predictor, max_batch, max_wait_ms, max_queue, int(max_body_mb * 2**20),
                         decode_threads=workers)  # fmt: skip
    except BaseException:
        sock.close()
        raise
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shown = f"[{host}]" if ":" in host else host
    print(
        f"resnetlab serve: {predictor.name} ({len(predictor.classes)} "
        f"{'labels, multi-label' if predictor.multilabel else 'classes'}, "
        f"{predictor.backend.name}, {predictor.precision}) at http://{shown}:{port}/",
        flush=True,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=10)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
