"""The routes a platform asks of the service: ``/health``, ``/livez``, ``/readyz`` (503 from
the first SIGTERM on), Prometheus ``/metrics`` and the ``/docs`` page."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response


def add_probe_routes(app: FastAPI, state: dict, admission, metrics, max_queue: int) -> None:
    """Add the health, readiness, metrics and docs routes to ``app``."""

    @app.get("/health", summary="Ready and how many images wait (kept for existing checks)")
    async def health():
        b = state.get("batcher")
        return {"status": "ok", "queued": b.queue.qsize() if b else 0}

    @app.get("/livez", summary="Liveness: the process answers (restart it when this fails)")
    async def livez():
        return {"status": "alive"}

    @app.get(
        "/readyz",
        summary="Readiness: the model is loaded and the server takes traffic",
        responses={503: {"description": "shutting down: send traffic elsewhere"}},
    )
    async def readyz():
        if not state["ready"]:
            return JSONResponse(
                {"error": "not ready: the server is shutting down"}, 503, {"Retry-After": "1"}
            )
        b = state["batcher"]
        return {
            "status": "ready",
            "queued": b.queue.qsize(),
            "in_flight": admission.admitted,
            "max_queue": max_queue,
        }

    @app.get(
        "/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response
    )
    async def prometheus_metrics():
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def api_docs():
        from .docs import render

        return HTMLResponse(render(app.openapi()))
