"""``serve --processes N``: N worker processes, each with its own model, sharing one port.

The parent binds the port (a busy one is refused before anything loads) and hands the bound
socket to N spawned workers (fresh interpreters: no forked torch threads). The first worker
loads the model alone, so that ``--backend auto`` measures once on a quiet machine and caches
its choice; the others then load in parallel and find it. The first ready worker makes the
socket listen, so connections are accepted only once a model can answer them; the kernel
hands each new connection to whichever worker accepts first. Each worker gets its share of
the CPU threads. The metrics of all workers are added up on every scrape (Prometheus'
multi-process mode, in a temporary folder). SIGTERM or Ctrl-C stops each worker gracefully;
a worker that dies stops the others, so that an orchestrator restarts the whole service.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile

from ..core.errors import ConfigError


def supervise(sock, settings: dict, url: str, worker) -> None:
    """``worker(sock, settings, index, threads, events)`` in each process (``app``'s: it builds
    the app there and puts ``("ready", index, description, note)`` or ``("error", index,
    message)`` on ``events``)."""
    n = settings["processes"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cpus or 1) // n)
    folder = tempfile.mkdtemp(prefix="resnetlab-metrics-")
    # Read by prometheus_client when a worker imports it: the workers' values go to files here.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    workers: list = []
    stopping = {"signal": None}

    def forward(sig, frame) -> None:
        stopping["signal"] = sig
        for w in workers:
            if w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}

    def start(index: int):
        w = ctx.Process(
            target=worker,
            args=(sock, settings, index, threads, events),
            name=f"resnetlab-serve-{index}",
        )
        w.start()
        workers.append(w)
        return w

    try:
        start(0)
        described, notes = _wait_ready(events, workers, 1, stopping)
        for i in range(1, n):
            start(i)
        more, _ = _wait_ready(events, workers, n - 1, stopping)
        described = described or more
        sock.close()  # the workers hold it now
        if stopping["signal"] is None:
            for note in notes:
                print(f"resnetlab serve: {note}", file=sys.stderr, flush=True)
            print(
                f"resnetlab serve: {described} at {url}, {n} processes "
                f"({threads} thread{'s' if threads > 1 else ''} each)",
                flush=True,
            )
        _watch(workers, stopping)
    finally:
        forward(signal.SIGTERM, None)
        for w in workers:
            w.join(30)
            if w.is_alive():
                print(
                    f"resnetlab serve: {w.name} (pid {w.pid}) did not stop within 30 s of "
                    "SIGTERM; killed",
                    file=sys.stderr,
                    flush=True,
                )
                w.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _wait_ready(events, workers, count: int, stopping) -> tuple[str | None, list[str]]:
    described, notes = None, []
    while count and stopping["signal"] is None:
        try:
            event = events.get(timeout=0.5)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode is not None]
            if dead:
                raise ConfigError(
                    f"serving process {dead[0].name} ended with status "
                    f"{dead[0].exitcode} while loading the model"
                ) from None
            continue
        if event[0] == "error":
            raise ConfigError(event[2])
        count -= 1
        described = event[2]
        if event[3]:
            notes.append(event[3])
    return described, notes


def _watch(workers, stopping) -> None:
    """Until a signal, or until a worker ends on its own (then the others are stopped)."""
    from multiprocessing.connection import wait

    while stopping["signal"] is None:
        ended = wait([w.sentinel for w in workers], timeout=1.0)
        if ended and stopping["signal"] is None:
            w = next(w for w in workers if w.sentinel in ended)
            print(
                f"resnetlab serve: {w.name} (pid {w.pid}) ended with status {w.exitcode}; "
                "stopping the others",
                file=sys.stderr,
                flush=True,
            )
            return
