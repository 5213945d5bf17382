"""The server's socket: bound before the model loads (a taken port is one line at once),
listening only once the model is warm, TCP_NODELAY on every connection, and the answer to a
client over the connection limit."""

from __future__ import annotations

import errno
import socket

from ..core.errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and not yet listening (connections are refused until
    ``start_listening``: a load balancer's TCP check sees the port closed while the model
    loads). A bad or busy port is a one-line ``ConfigError``, before the model is loaded."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number; give one from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not protocol 0: asyncio sets TCP_NODELAY only on sockets whose ``proto`` says
    # TCP, and accepted connections inherit it. Without it every response on a kept-alive
    # connection waited about 40 ms for Nagle's algorithm and the peer's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn does: a restarted server can take its port back at once (TIME_WAIT); a port
    # another program listens on is still refused.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _port_error(exc, host, port) from None
    return sock


def start_listening(sock: socket.socket) -> None:
    try:
        sock.listen(2048)
    except OSError as exc:
        host, port = sock.getsockname()[:2]
        sock.close()
        raise _port_error(exc, host, port) from None


def _port_error(exc: OSError, host: str, port: int) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} is in use; pick another with --port")
    if exc.errno == errno.EACCES:
        return ConfigError(
            f"port {port} needs administrator rights here; pick one above 1023 with --port"
        )
    reason = exc.strerror or str(exc)
    return ConfigError(f"cannot listen on {host} port {port}: {reason}; check --host")


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (``bind`` then ``start_listening``)."""
    sock = bind(host, port)
    start_listening(sock)
    return sock


def url(host: str, port: int) -> str:
    """The address to open: an address that listens on every interface is not one a browser
    can open, so 0.0.0.0 and :: show this machine's loopback address."""
    if host in ("0.0.0.0", ""):
        return f"http://127.0.0.1:{port}/ (listening on every IPv4 interface, {host or '0.0.0.0'})"
    if host == "::":
        return f"http://[::1]:{port}/ (listening on every interface, ::)"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _connection_limit_answer() -> None:
    """Beyond ``--max-connections`` uvicorn answers 503 itself, in plain text and without
    Retry-After; this makes that answer the service's own (one error shape, Retry-After)."""
    import importlib

    from .gate import error_response

    async def service_unavailable(scope, receive, send) -> None:
        for message in error_response(
            503,
            "server busy: too many connections, retry shortly",
            {"Retry-After": "1", "Connection": "close"},
        ):
            await send(message)

    for name in ("h11_impl", "httptools_impl"):
        try:
            module = importlib.import_module(f"uvicorn.protocols.http.{name}")
        except ImportError:  # httptools is not installed
            continue
        if hasattr(module, "service_unavailable"):
            module.service_unavailable = service_unavailable
