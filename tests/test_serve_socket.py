"""The server's plumbing below the routes: the listening socket handed to uvicorn, and what the
signal handler may touch."""

import asyncio
import socket
import threading
from types import SimpleNamespace

from resnetlab.serve.app import mark_not_ready
from resnetlab.serve.metrics import Metrics
from resnetlab.serve.sockets import listen


def test_accepted_connections_have_tcp_nodelay():
    """Accepted connections must not wait for Nagle's algorithm (about 40 ms per response on a
    kept-alive connection)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = listen("127.0.0.1", port)
    seen = {}

    async def main():
        async def handle(reader, writer):
            raw = writer.get_extra_info("socket")
            seen["nodelay"] = raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()

        # What uvicorn does with a socket it is given: asyncio's server over it.
        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen.get("nodelay") == 1


def test_the_exit_signal_takes_no_metric_lock():
    """SIGTERM interrupts the main thread anywhere, also inside a metric update that holds
    prometheus_client's lock (not reentrant): the handler must not wait for that lock, which is
    how a worker of --processes 2 once hung for 30 s until it was killed."""
    metrics = Metrics()
    metrics.ready.set(1)
    loop = asyncio.new_event_loop()
    app = SimpleNamespace(
        state=SimpleNamespace(serving={"ready": True, "loop": loop}, metrics=metrics)
    )
    lock = metrics.ready._value._lock
    with lock:  # the interrupted update
        handler = threading.Thread(target=mark_not_ready, args=(app,), daemon=True)
        handler.start()
        handler.join(timeout=5)
        blocked = handler.is_alive()
    handler.join()
    assert not blocked, "the signal handler waited for the metric's lock"
    assert app.state.serving["ready"] is False
    loop.run_until_complete(asyncio.sleep(0))  # the loop sets the gauge afterwards
    loop.close()
    assert metrics.registry.get_sample_value("resnetlab_ready") == 0
