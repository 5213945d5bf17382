"""What every request passes through before the routes: its id, its access-log line and
metrics (``Gate``); then the API key and admission (``Guard``). Plain ASGI middlewares:
Starlette's BaseHTTPMiddleware costs about a millisecond a request, as much as running this
project's small models."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import logging
import re
import sys
import time
import uuid

log = logging.getLogger("resnetlab.serve")
access_log = logging.getLogger("resnetlab.serve.access")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# A client's X-Request-ID is echoed when it is a sane token; anything else gets a fresh one.
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# Routes a load balancer or an orchestrator calls without credentials.
OPEN_ROUTES = frozenset({"/health", "/livez", "/readyz"})
# Routes that read a body and run the model: admitted, or refused before their body is read.
WORK_ROUTES = frozenset({"/predict", "/explain"})


def error_response(status: int, message: str, headers: dict | None = None):
    """An answer in the service's one error shape, ``{"error": message}``, as ASGI messages."""
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [
        (k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": head},
        {"type": "http.response.body", "body": body},
    ]


async def _answer(send, status: int, message: str, headers: dict | None = None) -> None:
    for m in error_response(status, message, headers):
        await send(m)


class Admission:
    """The bounds on work: at most ``max_admitted`` prediction requests at once (being read,
    decoded, queued or run; beyond, 503 + Retry-After before the body is read), of which at
    most ``max_reading`` read and decode at once (each holds up to the body cap in memory); the
    others wait with their body unread, in the kernel's socket buffers."""

    def __init__(self, max_admitted: int, max_reading: int, metrics=None) -> None:
        self.max_admitted, self.max_reading = max_admitted, max_reading
        self.admitted = 0
        self.reading = asyncio.Semaphore(max_reading)
        self.metrics = metrics

    def busy(self) -> bool:
        return self.admitted >= self.max_admitted


class Guard:
    """The API key (every route but the health ones) and admission (the work routes)."""

    def __init__(self, app, admission: Admission, api_key: str | None = None, metrics=None):
        self.app, self.admission, self.metrics = app, admission, metrics
        self.api_key = api_key.encode() if api_key else None

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key":
                given = value.strip()
            else:
                continue
            if hmac.compare_digest(given, self.api_key):
                return True
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.api_key is not None and path not in OPEN_ROUTES and not self._authorized(scope):
            await _answer(
                send,
                401,
                "missing or wrong API key: send it as 'Authorization: "
                "Bearer KEY' or 'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        if path not in WORK_ROUTES or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        a = self.admission
        if a.busy():
            if self.metrics is not None:
                self.metrics.refused.labels("busy").inc()
            await _answer(
                send,
                503,
                f"server busy: {a.max_admitted} requests in progress, retry shortly",
                {"Retry-After": "1"},
            )
            return
        a.admitted += 1
        if self.metrics is not None:
            self.metrics.admitted.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            a.admitted -= 1
            if self.metrics is not None:
                self.metrics.admitted.dec()


class Gate:
    """The request id (X-Request-ID: the client's when it sent a sane one, else a fresh one) on
    the answer and on every log line; one access-log line; the request metrics; and a request
    cut off by the shutdown ended with one line instead of a traceback."""

    def __init__(self, app, metrics=None, routes: frozenset = frozenset()) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        agent = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _SANE_ID.fullmatch(candidate) else None
            elif name == b"user-agent":
                agent = value.decode("latin-1")
        rid = rid or uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        seen = {"status": 0, "in": 0, "out": 0}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
            return message

        async def tagging_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        except asyncio.CancelledError:
            # uvicorn's graceful-shutdown timeout (or a second Ctrl-C) cut this request off,
            # typically an upload still arriving: say so in one line, not a traceback.
            log.warning(
                "%s %s cut off by the shutdown after %.1f s (%d body bytes read)",
                scope["method"],
                scope["path"],
                time.perf_counter() - start,
                seen["in"],
            )
            if not seen["status"]:
                with contextlib.suppress(Exception):
                    await _answer(
                        tagging_send,
                        503,
                        "the server is shutting down",
                        {"Connection": "close", "Retry-After": "1"},
                    )
            seen["status"] = seen["status"] or 499
        finally:
            seconds = time.perf_counter() - start
            status = seen["status"] or 500
            route = scope["path"] if scope["path"] in self.routes else "other"
            if self.metrics is not None:
                m = self.metrics
                m.requests.labels(route, scope["method"], str(status)).inc()
                m.latency.labels(route).observe(seconds)
                if seen["in"]:
                    m.body_bytes.labels(route).observe(seen["in"])
            if access_log.isEnabledFor(logging.INFO):
                _access(scope, status, seen, seconds, agent)
            REQUEST_ID.reset(token)


def _client(scope) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _access(scope, status: int, seen: dict, seconds: float, agent: str) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope["path"] + (f"?{query}" if query else "")
    fields = {
        "client": _client(scope),
        "method": scope["method"],
        "path": scope["path"],
        "query": query,
        "status": status,
        "bytes_in": seen["in"],
        "bytes_out": seen["out"],
        "duration_ms": round(1000 * seconds, 2),
        "user_agent": agent,
    }
    access_log.info(
        '%s "%s %s" %d in %dB out %dB %.1fms',
        fields["client"],
        scope["method"],
        target,
        status,
        seen["in"],
        seen["out"],
        1000 * seconds,
        extra={"access": fields},
    )


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id, and for access lines
    client, method, path, query, status, bytes_in, bytes_out, duration_ms, user_agent."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        out.update(getattr(record, "access", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Our lines and uvicorn's through one handler on stderr, each with its request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # The libraries' own INFO lines (the ONNX exporter's passes, ...) are not the service's:
    # only the server's lines follow --log-level, unless it is debug.
    root.setLevel(level.upper() if level in ("debug", "warning", "error") else "WARNING")
    logging.getLogger("resnetlab.serve").setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # through ours, not uvicorn's own handlers
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
