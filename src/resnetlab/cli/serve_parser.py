"""The flags of ``resnetlab serve``: where it listens, the model's backend, and the limits,
logs and access of the service (see docs/serving.md)."""

from __future__ import annotations

import argparse

from ..core.device import PRECISIONS
from .flags import _args


def add_serve_parser(sub, backend: tuple, device: tuple, tta: tuple) -> argparse.ArgumentParser:
    """Add ``serve`` to the subcommands ``sub``; the flags it shares with other commands
    (``--backend``, ``--device``, ``--tta``) come from the main parser."""
    return _args(
        sub.add_parser("serve", help="HTTP API + upload page for a trained model"),
        ("run", {}),
        ("--host", {"default": "127.0.0.1", "help": "default 127.0.0.1 (this machine only)"}),
        ("--port", {"type": int, "default": 8000}),
        backend,
        device,
        (
            "--precision",
            {
                "default": "fp32",
                "choices": PRECISIONS,
                "help": "fp32 (default) gives the same probabilities alone or batched",
            },
        ),
        ("--max-batch", {"type": int, "default": 16, "help": "1 turns micro-batching off"}),
        ("--max-wait-ms", {"type": float, "default": 5.0}),
        (
            "--max-queue",
            {
                "type": int,
                "default": 256,
                "help": "prediction requests in progress at once (being read, "
                "decoded, queued or run); beyond this: 503 + Retry-After at once, "
                "before the body is read. Memory is bounded by --max-reading, not "
                "by this; it bounds the wait (256 / the images per second)",
            },
        ),
        (
            "--max-reading",
            {
                "type": int,
                "help": "of those, how many read and decode their "
                "upload at once, each holding up to --max-body-mb (default 2 x "
                "--workers); the others wait, unread",
            },
        ),
        (
            "--max-connections",
            {"type": int, "default": 1024, "help": "open connections; beyond this: 503"},
        ),
        ("--max-body-mb", {"type": float, "default": 10.0}),
        ("--workers", {"type": int, "default": 2, "help": "image-decoding threads"}),
        (
            "--processes",
            {
                "type": int,
                "default": 1,
                "help": "serving processes sharing the port, each with its own model "
                "and its share of the CPU threads",
            },
        ),
        (
            "--api-key",
            {
                "help": "required on every route but /health, /livez, /readyz, as "
                "'Authorization: Bearer KEY' or 'X-API-Key: KEY' (default: "
                "$RESNETLAB_API_KEY; none: no key)"
            },
        ),
        (
            "--cors-origin",
            {
                "action": "append",
                "metavar": "ORIGIN",
                "help": "let pages from ORIGIN (e.g. https://app.example.com, or *) "
                "call the API from a browser; repeatable",
            },
        ),
        (
            "--shutdown-timeout",
            {
                "type": float,
                "default": 10.0,
                "metavar": "SECONDS",
                "help": "on SIGTERM/Ctrl-C, how long requests in flight may "
                "take to finish before they are cut off",
            },
        ),
        (
            "--log-level",
            {
                "default": "info",
                "choices": ["debug", "info", "warning", "error"],
                "help": "info: one access line per request",
            },
        ),
        (
            "--log-format",
            {
                "default": "text",
                "choices": ["text", "json"],
                "help": "json: one object a line (client, bytes, status, time, request id)",
            },
        ),
        tta,
    )
