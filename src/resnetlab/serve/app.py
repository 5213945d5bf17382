"""The HTTP service: POST /predict, GET /health, GET /model, GET / (the upload page)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from ..data.images import DECODE_FORMATS, ImageDecodeError, open_image
from ..predict import Predictor
from .batcher import MicroBatcher, QueueFull

log = logging.getLogger("resnetlab.serve")
PAGE = Path(__file__).with_name("page.html")
# Formats a browser may send that we never decode: answered 415, not 400.
REFUSED_TYPES = ("application/pdf", "application/postscript", "image/svg+xml", "text/")
REFUSED_MAGIC = (b"%PDF", b"%!PS", b"\xc5\xd0\xd3\xc6", b"<svg", b"<?xml", b"8BPS")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        self.status, self.message, self.headers = status, message, headers or {}


async def read_capped(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``cap`` bytes (chunked uploads too)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPError(400, "invalid Content-Length")
        if int(length) > cap:
            raise HTTPError(413, f"body of {int(length):,} bytes exceeds the {cap:,}-byte limit")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise HTTPError(413, f"body exceeds the {cap:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


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
    async def predict(request: Request, topk: int = 5):
        if not 1 <= topk <= len(predictor.classes):
            raise HTTPError(400, f"topk must be between 1 and {len(predictor.classes)}")
        state["arriving"] += 1
        try:
            image = await _read_image(request)
        finally:
            state["arriving"] -= 1
        try:
            probs = await state["batcher"].submit(image)
        except QueueFull:
            raise HTTPError(503, "server busy: too many requests queued, retry shortly",
                            {"Retry-After": "1"}) from None  # fmt: skip
        return {"topk": predictor.topk_rows(probs.unsqueeze(0), topk)[0], "model": predictor.name}

    async def _read_image(request: Request):
        body = await read_capped(request, max_body)
        data, ctype = await image_bytes(request, body)
        if not data:
            raise HTTPError(400, "empty upload: send an image as the body or as 'file'")
        if _refused(data, ctype):
            raise HTTPError(415, f"unsupported media type; send one of {', '.join(DECODE_FORMATS)}")
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(decoder, decode, data)
        except ImageDecodeError as exc:
            if "exceeds the limit" in exc.reason or "bomb" in exc.reason:
                raise HTTPError(413, exc.reason) from None
            raise HTTPError(400, f"cannot decode the image: {exc.reason}") from None
        return image

    @app.get("/health")
    async def health():
        b = state.get("batcher")
        return {"status": "ok", "queued": b.queue.qsize() if b else 0}

    @app.get("/model")
    async def model_info():
        m = predictor.meta
        return {
            "model": m["model"], "classes": predictor.classes,
            "num_classes": len(predictor.classes), "input_size": m["input_size"],
            "mean": m["mean"], "std": m["std"],
            "precision": predictor.precision, "backend": predictor.backend,
            "max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_body_bytes": max_body,
        }  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "torch",
    precision: str = "fp32",
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 64,
    max_body_mb: float = 10.0,
    workers: int = 2,
) -> None:
    import uvicorn

    predictor = Predictor(run, backend=backend, precision=precision, batch_size=max_batch)
    import torch

    c, h, w = predictor.meta["input_size"]
    predictor.probabilities(torch.zeros(max_batch, c, h, w, dtype=torch.uint8))  # warm-up
    app = create_app(predictor, max_batch, max_wait_ms, max_queue, int(max_body_mb * 2**20),
                     decode_threads=workers)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shown = f"[{host}]" if ":" in host else host
    print(
        f"resnetlab serve: {predictor.name} ({len(predictor.classes)} classes, "
        f"{predictor.backend}, {predictor.precision}) at http://{shown}:{port}/",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
