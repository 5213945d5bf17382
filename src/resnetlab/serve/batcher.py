"""Micro-batching: concurrent requests share one forward pass.

Requests wait in a bounded queue; one worker takes the first waiting image, gathers more for
at most ``max_wait_ms`` or until ``max_batch``, runs them as one batch, and answers each.
A full queue is refused at once (the caller answers 503), so memory stays flat under overload.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from ..core.errors import ConfigError
from ..data.transforms import stack_images


class QueueFull(Exception):
    pass


class MicroBatcher:
    def __init__(
        self,
        infer,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        more_coming=None,
        on_batch=None,
        on_depth=None,
    ):
        """``infer(uint8 batch) -> probabilities`` runs in one background thread.

        ``more_coming()`` tells whether requests are on their way (still being read or
        decoded): only then is it worth waiting for them; a lone request runs at once.
        ``on_batch(images, seconds)`` hears of each forward pass, ``on_depth(n)`` of each change
        of the queue's length (the server's metrics)."""
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ConfigError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.infer = infer
        self.more_coming = more_coming or (lambda: True)
        self.on_batch = on_batch or (lambda images, seconds: None)
        self.on_depth = on_depth or (lambda n: None)
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Answer everything already queued, then stop."""
        while not self.queue.empty() and self.task is not None and not self.task.done():
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, image: torch.Tensor) -> torch.Tensor:
        return (await self.submit_many([image]))[0]

    async def submit_many(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every image queued, or none (QueueFull) when they do not all fit: a request with
        several files is answered for each or refused as a whole."""
        if self.queue.maxsize - self.queue.qsize() < len(images):
            raise QueueFull
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, fut in zip(images, futures):
            self.queue.put_nowait((image, fut))
        self.on_depth(self.queue.qsize())
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for fut in futures:  # a cancelled request's images are skipped, not run
                fut.cancel()
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            items = [first]
            deadline = time.monotonic() + self.max_wait
            while len(items) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.queue.empty() and not self.more_coming()):
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self.on_depth(self.queue.qsize())
            live = [(img, fut) for img, fut in items if not fut.cancelled()]
            if not live:
                continue
            batch = stack_images([img for img, _ in live])
            t0 = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.executor, self.infer, batch)
            except Exception as exc:  # answer every waiter with the failure
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.on_batch(len(live), time.perf_counter() - t0)
            self.batches += 1
            self.images += len(live)
            for (_, fut), row in zip(live, probs):
                if not fut.done():
                    fut.set_result(row)
