"""benchmarks/http_load.py, the load generator of serve_load.py, against a stub server on
127.0.0.1: what it counts (good answers, 503s, broken connections, the measured window) and
how its clients treat Retry-After and a closed connection. Counts only, no timings."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import http_load  # noqa: E402


async def _stub(answers):
    """A server answering each request with the next of ``answers(n)``: raw HTTP bytes."""
    seen = {"requests": 0, "connections": 0}

    async def handle(reader, writer):
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                seen["requests"] += 1
                raw = answers(seen["requests"])
                writer.write(raw)
                await writer.drain()
                if b"Connection: close" in raw:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def _answer(status: int, extra: str = "", body: bytes = b"{}") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def _level(answers, **kw):
    async def main():
        server, port, seen = await _stub(answers)
        head, body = http_load.multipart_request("127.0.0.1", port, "/predict", b"png")
        async with server:
            out = await http_load.run_level(
                "127.0.0.1", port, head, body, kw.pop("concurrency", 1), 0.4, 0.0, **kw
            )
        return out, seen

    return asyncio.run(main())


def test_a_polite_client_waits_out_retry_after_and_a_rude_one_does_not():
    busy = lambda n: _answer(503, "Retry-After: 1\r\n")  # noqa: E731
    polite, _ = _level(busy)
    rude, _ = _level(busy, honour_retry_after=False)
    assert polite["refused_503"] == 1  # then it waits past the end of the level
    assert rude["refused_503"] > 1
    assert polite["good"] == rude["good"] == 0
    assert polite["p50_ms"] is None


def test_good_answers_through_closed_connections_and_chunked_bodies():
    def answers(n):
        if n % 3 == 0:
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        return _answer(200, "Connection: close\r\n" if n % 3 == 1 else "")

    out, seen = _level(answers, concurrency=2)
    assert 3 <= out["good"] <= seen["requests"]  # one may end after the window
    assert out["broken_connections"] == 0 and out["refused_503"] == 0
    assert seen["connections"] > 2  # the clients came back after each closed connection
    assert out["p50_ms"] is not None


def test_new_connection_per_request():
    out, seen = _level(lambda n: _answer(200), keep_alive=False)
    assert seen["requests"] == seen["connections"] >= out["good"] >= 3


def test_the_summary_counts_only_the_measured_window():
    r = http_load.Record()
    for end, status in ((0.5, 200), (1.0, 200), (1.5, 503), (1.9, 500), (2.0, 200)):
        r.add(end, status, 0.010)
    r.fail(1.2, ConnectionResetError())
    s = r.summary(1.0, 2.0)
    assert (s["good"], s["refused_503"], s["broken_connections"]) == (1, 1, 1)
    assert s["other_statuses"] == {"500": 1}
    assert s["good_per_second"] == 1.0 and s["p50_ms"] == 10.0
