"""The listening socket the server hands to uvicorn: accepted connections must not wait for
Nagle's algorithm (about 40 ms per response on a kept-alive connection)."""

import asyncio
import socket

from resnetlab.serve.sockets import listen


def test_accepted_connections_have_tcp_nodelay():
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
