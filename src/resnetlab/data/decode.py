"""Each file decoded once: the check that it can be read, and whatever the caller takes from
its pixels at the same time (its square in the in-memory cache, its statistics)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..core.progress import Meter
from .images import ImageDecodeError, open_image


@dataclass(frozen=True)
class Unreadable:
    """A file that could not be decoded, and why (``ImageDecodeError``'s reason)."""

    reason: str


def decode_workers() -> int:
    """Decoding threads: two per core, at most 8 (Pillow releases the GIL while it decodes)."""
    return min(8, (os.cpu_count() or 1) * 2)


def decode_files(
    paths: Sequence,
    channels: int,
    take: Callable[[int, Any], Any] | None,
    desc: str | None = None,
    workers: int | None = None,
) -> list:
    """For each of ``paths``, in order: ``take(index, image)`` of its decoded image
    (``open_image``; None without ``take``), or an ``Unreadable`` with the reason. ``take``
    runs in the decoding threads and should keep little (it is given one image at a time).
    ``desc``: shown with the progress (``progress.Meter``); None shows none."""

    def one(i: int):
        try:
            img = open_image(paths[i], channels)
        except ImageDecodeError as exc:
            return Unreadable(exc.reason)
        return take(i, img) if take is not None else None

    out: list = []
    with (
        ThreadPoolExecutor(max_workers=workers or decode_workers()) as pool,
        Meter(desc or "", len(paths), enabled=desc is not None) as meter,
    ):
        for result in pool.map(one, range(len(paths))):
            out.append(result)
            meter.update()
    return out
