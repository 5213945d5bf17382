"""The HTTP service: POST /predict, POST /explain, GET /health, GET /model, GET / (the page)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import ConfigError
from ..data.images import DECODE_FORMATS, ImageDecodeError, open_image
from ..inference.predict import Predictor
from ..inference.tta import PASSES, check_tta
from .batcher import MicroBatcher, QueueFull
from .explain_route import add_explain_route
from .gate import Admission, Gate, Guard
from .openapi import ERROR_RESPONSES, PREDICT_DOC
from .probes import add_probe_routes
from .sockets import _connection_limit_answer, bind, start_listening, url
from .upload import MAX_FILES, Upload, UploadError, _refused, read_uploads

log = logging.getLogger("resnetlab.serve")
PAGE = Path(__file__).with_name("page.html")
# fp32 runtimes give the same probabilities alone or batched to rounding; reduced precision
# changes with the batch's kernel choice.
BATCH_TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-2, "int8": 1e-2}


# One error type for the routes and the upload reader: answered {"error": message}.
HTTPError = UploadError


def validation_message(exc) -> str:
    """FastAPI's list of validation errors as one sentence: ``topk: input should be a valid
    integer, unable to parse string as an integer (got 'abc')``."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body", "path"))
        msg = str(e.get("msg", "invalid value"))
        msg = msg[:1].lower() + msg[1:]
        got = f" (got {e['input']!r})" if "input" in e and e["input"] is not None else ""
        parts.append(f"{where or 'request'}: {msg}{got}")
    return "; ".join(parts) or "invalid request"


def endpoints(app) -> list[str]:
    """``METHOD /path`` of every route the app answers (HEAD left out)."""
    out = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD" and getattr(route, "include_in_schema", True):
                out.append(f"{method} {route.path}")
    return out


def create_app(
    predictor: Predictor,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    max_body: int = 10 * 2**20,
    max_pixels: int = 40_000_000,
    decode_threads: int = 2,
    max_reading: int | None = None,
    api_key: str | None = None,
    cors_origins: list[str] | tuple[str, ...] = (),
) -> FastAPI:
    """The service. At most ``max_queue`` prediction requests are admitted at once (being
    read, decoded, queued or run; beyond, 503 + Retry-After before the body is read), of which
    ``max_reading`` (default ``2 × decode_threads``) read and decode at once: memory is bounded
    by about ``max_reading × 2 × max_body`` whatever the number of connections."""
    from concurrent.futures import ThreadPoolExecutor

    from .metrics import Metrics

    metrics = Metrics()
    max_reading = max_reading or 2 * decode_threads
    if max_queue < 1 or max_reading < 1:
        raise ConfigError("--max-queue and --max-reading must be at least 1")
    admission = Admission(max_queue, max_reading, metrics)
    decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
    state: dict = {"arriving": 0, "ready": False}  # arriving: being read or decoded

    def on_batch(images: int, seconds: float) -> None:
        metrics.batch_size.observe(images)
        metrics.batch_seconds.observe(seconds)
        metrics.images.inc(images)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(
            predictor.probabilities,
            max_batch,
            max_wait_ms,
            # a multi-file request never waits on another for queue room
            max(max_queue, MAX_FILES),
            more_coming=lambda: state["arriving"] > 0,
            on_batch=on_batch,
            on_depth=metrics.queued.set,
        )
        batcher.start()
        state["batcher"] = batcher
        state["loop"] = asyncio.get_running_loop()
        state["ready"] = True
        metrics.ready.set(1)
        if state.get("on_ready"):  # --processes: the parent hears of each worker ready
            state["on_ready"]()
        memory = asyncio.get_running_loop().create_task(_note_memory(metrics))
        yield
        state["ready"] = False
        metrics.ready.set(0)
        memory.cancel()
        await batcher.stop()
        decoder.shutdown(wait=True)

    app = FastAPI(
        title="resnetlab",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="A classifier trained by resnetlab",
    )
    app.state.serving = state  # the server marks it not ready when its shutdown begins
    app.state.metrics = metrics
    m = predictor.meta
    metrics.model.labels(
        m.model,
        str(len(predictor.classes)),
        predictor.task.name,
        predictor.backend.name,
        predictor.precision,
        "x".join(map(str, m.input_size)),
    ).set(1)
    for name, value in (
        ("max_queue", max_queue),
        ("max_reading", max_reading),
        ("max_batch", max_batch),
        ("max_body_bytes", max_body),
    ):
        metrics.limits.labels(name).set(value)

    @app.exception_handler(UploadError)
    async def _http_error(request: Request, exc: UploadError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    # FastAPI's own answers (a bad query value, an unknown path or method) in the same
    # {"error": message} shape as every other refusal.
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": validation_message(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException):
        path, method = request.url.path, request.method
        if exc.status_code == 404:
            message = f"no endpoint {path}; this server has {', '.join(endpoints(app))}"
        elif exc.status_code == 405:
            allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
            message = f"{method} is not allowed on {path}; use {allowed or 'another method'}"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    def decode(data: bytes):
        img = open_image(
            data, predictor.channels, max_pixels=max_pixels, min_side=predictor.min_side
        )
        return predictor.preprocess(img)

    async def read_images(request: Request) -> tuple[list, list[Upload]]:
        """The upload(s) read and decoded within the bound on requests doing so at once (a
        request waiting for its turn holds no more than the server's socket buffer). Of a form
        with several files, a file that cannot be used is its ``UploadError`` in the list."""
        state["arriving"] += 1
        try:
            async with admission.reading:
                metrics.reading.inc()
                try:
                    uploads = await read_uploads(request, max_body)
                    decoded = []
                    for u in uploads:
                        try:
                            decoded.append(await _decode_upload(u))
                        except UploadError as exc:
                            if len(uploads) == 1:
                                raise
                            decoded.append(exc)
                finally:
                    metrics.reading.dec()
        finally:
            state["arriving"] -= 1
        return decoded, uploads

    async def _queue(images: list) -> list:
        try:
            return await state["batcher"].submit_many(images)
        except QueueFull:
            metrics.refused.labels("queue_full").inc()
            raise HTTPError(
                503, "server busy: too many requests queued, retry shortly", {"Retry-After": "1"}
            ) from None

    def _answer(probs, topk):
        # topk above the number of classes means all of them (default 5). For a multi-label
        # model: every label at or above its threshold (at most topk when given).
        return predictor.task.answer(predictor.topk_rows(probs.unsqueeze(0), topk)[0])

    @app.post(
        "/predict",
        openapi_extra=PREDICT_DOC,
        responses=ERROR_RESPONSES,
        summary="Top classes of an uploaded image (or of each file of a form)",
    )
    async def predict(request: Request, topk: int | None = None):
        """The image as the raw body (`Content-Type: image/png`, ...) or as the file of a
        multipart form (`curl -F file=@x.png`). A form with several files is answered for each:
        `{"results": [{"filename", "topk"} or {"filename", "error", "status"}], "model"}`."""
        if topk is not None and topk < 1:
            raise HTTPError(
                400,
                f"topk must be at least 1, got {topk} (a topk above the "
                f"{len(predictor.classes)} classes gives all of them)",
            )
        decoded, uploads = await read_images(request)
        good = [d for d in decoded if not isinstance(d, UploadError)]
        probs = iter(await _queue(good) if good else ())
        if len(uploads) == 1:
            return {**_answer(next(probs), topk), "model": predictor.name}
        results = []
        for u, d in zip(uploads, decoded):
            if isinstance(d, UploadError):
                results.append({"filename": u.filename, "error": d.message, "status": d.status})
            else:
                results.append({"filename": u.filename, **_answer(next(probs), topk)})
        return {"results": results, "model": predictor.name}

    async def _decode_upload(upload: Upload):
        data, ctype = upload.data, upload.content_type
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

    add_explain_route(app, predictor, state, read_images)

    add_probe_routes(app, state, admission, metrics, max_queue)

    @app.get("/model")
    async def model_info():
        m = predictor.meta
        return {
            "model": m.model,
            "classes": predictor.classes,
            "num_classes": len(predictor.classes),
            "input_size": m.input_size,
            "mean": m.mean,
            "std": m.std,
            # probabilities are softmax(logits / temperature); None: uncalibrated
            "temperature": m.temperature,
            # multilabel: one sigmoid probability per class, a label shown from its threshold
            "task": predictor.task.name,
            "thresholds": predictor.thresholds,
            "precision": predictor.precision,
            "backend": predictor.backend.name,
            # how far one image's probabilities may move between a lone and a batched call
            "tolerance": BATCH_TOLERANCE.get(predictor.precision, 1e-2),
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "max_body_bytes": max_body,
            # test-time augmentation: logits averaged over this many views, then calibrated
            "tta": predictor.tta,
            "tta_passes": PASSES[predictor.tta],
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    # Outermost last: Gate (request id, access log, metrics) > CORS > Guard (key, admission).
    app.add_middleware(Guard, admission=admission, api_key=api_key, metrics=metrics)
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            max_age=600,
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "X-Class", "X-Class-Index", "X-Prob"],
        )
    routes = frozenset(r.path for r in app.routes if hasattr(r, "path"))
    app.add_middleware(Gate, metrics=metrics, routes=routes)
    return app


async def _note_memory(metrics) -> None:
    while True:
        metrics.note_memory()
        await asyncio.sleep(5)


def _version() -> str:
    from .. import __version__

    return __version__


def _build(settings: dict):
    """The model loaded, warmed up and wrapped in the app: everything before the port opens."""
    import torch

    predictor = Predictor(
        settings["run"],
        backend=settings["backend"],
        precision=settings["precision"],
        batch_size=settings["max_batch"],
        device=settings["device"],
        tta=settings.get("tta", "none"),
    )
    c, h, w = predictor.meta.input_size
    predictor.probabilities(torch.zeros(settings["max_batch"], c, h, w, dtype=torch.uint8))
    app = create_app(
        predictor,
        settings["max_batch"],
        settings["max_wait_ms"],
        settings["max_queue"],
        int(settings["max_body_mb"] * 2**20),
        decode_threads=settings["workers"],
        max_reading=settings["max_reading"],
        api_key=settings["api_key"],
        cors_origins=settings["cors_origins"],
    )
    return app, predictor


def _describe(predictor: Predictor) -> str:
    kind = predictor.task.outputs
    return (
        f"{predictor.name} ({len(predictor.classes)} {kind}, {predictor.backend.name}, "
        f"{predictor.precision}"
        + (
            f", TTA {predictor.tta}: x{PASSES[predictor.tta]} passes"
            if predictor.tta != "none"
            else ""
        )
        + ")"
    )


def mark_not_ready(app) -> None:
    """/readyz says 503 from the first SIGTERM or Ctrl-C on. This runs in the signal handler,
    that is in the main thread between two of its bytecodes, maybe inside a metric update: the
    gauge is set by the event loop afterwards, since prometheus_client guards every value with
    a lock that is not reentrant (setting it here hung a worker that was counting a request)."""
    app.state.serving["ready"] = False
    loop = app.state.serving.get("loop")
    if loop is not None:
        with contextlib.suppress(RuntimeError):  # the loop has already closed
            loop.call_soon_threadsafe(app.state.metrics.ready.set, 0)


def _run_uvicorn(app, sock: socket.socket, settings: dict) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            mark_not_ready(app)
            super().handle_exit(sig, frame)

    _connection_limit_answer()
    level = settings["log_level"]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        log_level="warning" if level in ("debug", "info") else level,
        limit_concurrency=settings["max_connections"],
        timeout_graceful_shutdown=settings["shutdown_timeout"],
    )
    Server(config).run(sockets=[sock])


def _process_worker(sock, settings: dict, index: int, threads: int, events) -> None:
    """One process of ``--processes N`` (see ``processes``)."""
    import torch

    from ..core.errors import ResnetlabError
    from .gate import setup_logging

    torch.set_num_threads(threads)
    setup_logging(settings["log_level"], settings["log_format"])
    try:
        app, predictor = _build(settings)
        start_listening(sock)
    except ResnetlabError as exc:
        events.put(("error", index, str(exc)))
        sys.exit(2)
    note = predictor.choice.note if predictor.choice is not None else None
    # Said once the app has started (its lifespan), so the banner waits for every worker.
    app.state.serving["on_ready"] = lambda: events.put(("ready", index, _describe(predictor), note))
    _run_uvicorn(app, sock, settings)


SETTINGS = (
    "run",
    "host",
    "port",
    "backend",
    "precision",
    "max_batch",
    "max_wait_ms",
    "max_queue",
    "max_body_mb",
    "workers",
    "device",
    "max_reading",
    "max_connections",
    "api_key",
    "cors_origins",
    "log_level",
    "log_format",
    "processes",
    "shutdown_timeout",
    "tta",
)


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    max_body_mb: float = 10.0,
    workers: int = 2,
    device: str | None = None,
    max_reading: int | None = None,
    max_connections: int = 1024,
    api_key: str | None = None,
    cors_origins: list[str] | tuple[str, ...] = (),
    log_level: str = "info",
    log_format: str = "text",
    processes: int = 1,
    shutdown_timeout: float = 10.0,
    tta: str = "none",
) -> None:
    import os

    from .gate import LOG_FORMATS, LOG_LEVELS, setup_logging

    if log_level not in LOG_LEVELS or log_format not in LOG_FORMATS:
        raise ConfigError(
            f"--log-level is one of {', '.join(LOG_LEVELS)} and --log-format one "
            f"of {', '.join(LOG_FORMATS)}"
        )
    if processes < 1 or max_connections < 1 or (max_reading is not None and max_reading < 1):
        raise ConfigError("--processes, --max-connections and --max-reading must be at least 1")
    api_key = api_key or os.environ.get("RESNETLAB_API_KEY") or None
    tta = check_tta(tta)  # before the port is taken
    settings = {k: v for k, v in locals().items() if k in SETTINGS}
    # The port first: a typo or a busy port is reported before the model is loaded; it listens
    # (accepts connections) only once the model is loaded and warm.
    sock = bind(host, port)
    if processes > 1:
        from .processes import supervise

        supervise(sock, settings, url(host, port), _process_worker)
        return
    try:
        setup_logging(log_level, log_format)
        app, predictor = _build(settings)
        if predictor.choice is not None:
            print(f"resnetlab serve: {predictor.choice.note}", file=sys.stderr, flush=True)
        start_listening(sock)
    except BaseException:
        sock.close()
        raise
    print(f"resnetlab serve: {_describe(predictor)} at {url(host, port)}", flush=True)
    _run_uvicorn(app, sock, settings)
