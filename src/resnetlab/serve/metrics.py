"""The server's Prometheus metrics (``GET /metrics``).

One process: a registry of its own per app (so two apps in one interpreter never share counts),
with the process collector (RSS, CPU, open files). ``--processes N``: each worker writes its
values to files in the folder ``PROMETHEUS_MULTIPROC_DIR`` names (set by the parent before the
workers start), and a scrape of any worker adds up all of them; the gauges then say how they
combine (``livesum``: the sum over live workers).
"""

from __future__ import annotations

import os
import resource

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
BYTES_BUCKETS = tuple(2**k for k in range(10, 25, 2))  # 1 KiB .. 16 MiB


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: only what a dashboard reads
        self.registry = CollectorRegistry(auto_describe=True)
        shared = multiprocess()
        if not shared:
            ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "resnetlab_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "resnetlab_request_duration_seconds",
            "time from the request's headers to the end of its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.body_bytes = Histogram(
            "resnetlab_request_body_bytes",
            "bytes of request body read",
            ["route"],
            buckets=BYTES_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "resnetlab_refused",
            "requests refused with 503 before their body was read, by reason",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "resnetlab_batch_size", "images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "resnetlab_batch_duration_seconds",
            "seconds per forward pass",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("resnetlab_images", "images answered", registry=r)
        mode = {"multiprocess_mode": "livesum"}
        self.queued = Gauge(
            "resnetlab_queue_depth", "images waiting for the model", registry=r, **mode
        )
        self.admitted = Gauge(
            "resnetlab_requests_in_flight",
            "prediction requests admitted and "
            "not yet answered (being read, decoded, queued or run)",
            registry=r,
            **mode,
        )
        self.reading = Gauge(
            "resnetlab_requests_reading",
            "admitted requests whose body is being read or decoded now",
            registry=r,
            **mode,
        )
        self.limits = Gauge(
            "resnetlab_limit",
            "the server's bounds, by name",
            ["name"],
            registry=r,
            multiprocess_mode="max",
        )
        self.ready = Gauge(
            "resnetlab_ready",
            "1 while the server takes traffic (GET /readyz)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.model = Gauge(
            "resnetlab_model_info",
            "the model served: always 1, the facts in labels",
            ["model", "classes", "task", "backend", "precision", "input_size"],
            registry=r,
            multiprocess_mode="max",
        )
        self.workers = (
            Gauge(
                "resnetlab_worker_resident_memory_bytes",
                "peak resident memory of each serving process",
                ["pid"],
                registry=r,
                multiprocess_mode="liveall",
            )
            if shared
            else None
        )

    def note_memory(self) -> None:
        """With ``--processes``: each worker's peak RSS (the process collector is per process)."""
        if self.workers is not None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.workers.labels(str(os.getpid())).set(peak)

    def render(self) -> tuple[bytes, str]:
        if multiprocess():
            from prometheus_client import multiprocess as mp

            self.note_memory()
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
