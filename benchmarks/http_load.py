"""A small closed-loop HTTP/1.1 load generator on asyncio, for benchmarks/serve_load.py.

Each client holds one connection (keep-alive) or opens one per request, sends a prepared
request, reads the whole answer, and sends the next as soon as it has one. A 503 is retried
after its ``Retry-After`` (a polite client) or at once (one that ignores it). Every answer is
recorded with the time it ended and the latency of its attempt, so a level's figures are
counted over a measured window after a warm-up.

Plain sockets through asyncio streams rather than an HTTP library: the client shares the
machine's cores with the server under test, and this costs it a few tens of microseconds a
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

CHUNK = 256 * 1024  # a large body is written in pieces, so a client never buffers all of it


def multipart_request(
    host: str, port: int, path: str, image: bytes, filename: str = "image.png", close=False
) -> tuple[bytes, bytes]:
    """(head, body) of ``POST path`` with the image as the form's ``file`` field, the way
    ``curl -F file=@image.png`` and a browser's form send it."""
    boundary = "resnetlab-bench-7d2f0c"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode()
    return head, body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closes: bool  # the server closes the connection after it


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    closes = headers.get("connection", "").lower() == "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:  # the body runs to the end of the connection
        body, closes = await reader.read(), True
    return Answer(status, headers, body, closes)


@dataclass
class Record:
    """What one level saw: per answer (end time, status, seconds of its attempt)."""

    ends: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)  # end times of broken connections
    failure_kinds: dict[str, int] = field(default_factory=dict)

    def add(self, end: float, status: int, seconds: float) -> None:
        self.ends.append(end)
        self.statuses.append(status)
        self.seconds.append(seconds)

    def fail(self, end: float, exc: BaseException) -> None:
        self.failures.append(end)
        kind = type(exc).__name__
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1

    def summary(self, start: float, stop: float) -> dict:
        """Figures over the window [start, stop): good (200) answers a second, p50/p95 of
        the accepted requests' latency, 503s and any other status or broken connection."""
        ends, statuses = np.array(self.ends), np.array(self.statuses)
        seconds = np.array(self.seconds) * 1000
        inside = (ends >= start) & (ends < stop) if len(ends) else np.zeros(0, bool)
        good = inside & (statuses == 200)
        window = stop - start
        ms = seconds[good]
        others = {
            str(s): int(n)
            for s, n in zip(*np.unique(statuses[inside & (statuses != 200)], return_counts=True))
            if s != 503
        }
        return {
            "seconds": round(window, 3),
            "good": int(good.sum()),
            "good_per_second": float(good.sum() / window),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "refused_503": int((inside & (statuses == 503)).sum()),
            "other_statuses": others,
            "broken_connections": int(sum(start <= t < stop for t in self.failures)),
            "broken_kinds": dict(self.failure_kinds),
        }


class Client:
    """One client: its connection (kept, or new for each request) and its retry manners."""

    def __init__(self, host, port, head, body, record, keep_alive=True, honour_retry_after=True):
        self.host, self.port, self.head, self.body = host, port, head, body
        self.record, self.keep_alive = record, keep_alive
        self.honour_retry_after = honour_retry_after
        self.reader = self.writer = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)

    async def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def _send(self) -> None:
        self.writer.write(self.head)
        view = memoryview(self.body)
        for i in range(0, len(view), CHUNK):
            self.writer.write(view[i : i + CHUNK])
            await self.writer.drain()
        await self.writer.drain()

    async def once(self) -> Answer:
        """One attempt: the request sent (while the answer is already being read, so a server
        that answers before reading the whole body is heard) and its answer read."""
        t0 = time.perf_counter()
        if self.writer is None:
            await self._connect()
        sending = asyncio.create_task(self._send())
        try:
            answer = await read_answer(self.reader)
        except BaseException:
            sending.cancel()
            with contextlib.suppress(BaseException):
                await sending
            await self._close()
            raise
        unsent = not sending.done()
        if unsent:  # answered before the body was all sent: the connection cannot be reused
            sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        end = time.perf_counter()
        self.record.add(end, answer.status, end - t0)
        if unsent or answer.closes or not self.keep_alive:
            await self._close()
        return answer

    async def loop(self, until: float) -> None:
        while time.perf_counter() < until:
            try:
                answer = await self.once()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self.record.fail(time.perf_counter(), exc)
                await asyncio.sleep(0.01)  # a refused or reset connection: not a hot loop
                continue
            if answer.status == 503 and self.honour_retry_after:
                wait = float(answer.headers.get("retry-after", "1") or 1)
                await asyncio.sleep(min(wait, max(0.0, until - time.perf_counter())))
        await self._close()


async def run_level(
    host: str,
    port: int,
    head: bytes,
    body: bytes,
    concurrency: int,
    seconds: float,
    warmup: float,
    keep_alive: bool = True,
    honour_retry_after: bool = True,
    sample=None,
    close_head: bytes | None = None,
) -> dict:
    """``concurrency`` clients for ``warmup + seconds``; the figures over the last
    ``seconds``. ``sample()`` is called every 0.25 s meanwhile (the server's memory)."""
    record = Record()
    t0 = time.perf_counter()
    start, stop = t0 + warmup, t0 + warmup + seconds
    clients = [
        Client(
            host,
            port,
            head if keep_alive or close_head is None else close_head,
            body,
            record,
            keep_alive,
            honour_retry_after,
        )
        for _ in range(concurrency)
    ]
    tasks = [asyncio.create_task(c.loop(stop)) for c in clients]
    samples = []
    while not all(t.done() for t in tasks):
        if sample is not None and time.perf_counter() >= start:
            samples.append(sample())
        await asyncio.wait(tasks, timeout=0.25)
    for t in tasks:
        t.result()
    out = record.summary(start, stop)
    out["samples"] = samples
    out["good_with_warmup"] = sum(s == 200 for s in record.statuses)
    return out


async def burst(host: str, port: int, head: bytes, body: bytes, n: int, sample=None) -> dict:
    """``n`` clients each send the request once, all at the same moment (a 503 retried after
    its Retry-After); ``sample()`` is called every 0.1 s until the last answer."""
    record = Record()
    t0 = time.perf_counter()

    async def one() -> None:
        client = Client(host, port, head, body, record, keep_alive=False)
        while True:
            try:
                answer = await client.once()
            except (OSError, asyncio.IncompleteReadError) as exc:
                record.fail(time.perf_counter(), exc)
                return
            if answer.status != 503:
                return
            await asyncio.sleep(float(answer.headers.get("retry-after", "1") or 1))

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    samples = []
    while not all(t.done() for t in tasks):
        if sample is not None:
            samples.append(sample())
        await asyncio.wait(tasks, timeout=0.1)
    wall = time.perf_counter() - t0
    out = record.summary(t0, time.perf_counter() + 1)
    out.update(wall_seconds=round(wall, 2), samples=samples)
    return out
