"""Dynamic batching: concurrent model requests share one forward pass.

A route submits its item with ``await batcher.submit(bundle, item)``; one with work to await
first (``POST /items`` decodes its copies in the threadpool) does it inside ``with
batcher.incoming():``. A :class:`Batcher` (one per kind of
work: classify, embed+search) runs one asyncio task that waits for a first item,
then for more while requests are on their way (inside ``incoming``) but at most
``max_wait`` seconds, and hands at most ``max_size`` items to ``fn`` in the model
thread. So a lone request never waits for company that is not coming, and under
load the requests that arrive during one forward pass form the next batch.

While the model is the bottleneck (the last batch took at least :data:`SATURATED`
times ``max_wait``) the wait is another one. Requests still preparing their uploads
arrive during the next pass anyway, and waiting for them only idled the model (a
full-width ResNet-18, ~100 ms per batch, 2 workers, 32 connections, alternating:
174.9 and 154.1 requests/s waiting for them, 193.1 and 185.2 not). What it waits
for instead, up to ``max_wait``, is as many pending items as the last batch was
taken from: under steady load, mostly the requests that batch's own answers just
released, on their way back from their clients. Without it a worker's connections
split into two halves that take turns in the model (batches of ~9 of 16), and a
pass over 9 images costs more per image than one over 16 (the same model, the same
load, ten alternating pairs on a 2-core AVX2 machine: 91.6 requests/s mean before,
95.5 after, mean batch 9.1 -> 15.5; six pairs on an AVX-512 one: 168.5 -> 171.8; both
within one sample's spread, both the same way). A narrow model's batches (10-25 ms)
are never saturated: there the wait fills batches that would otherwise go out half
empty. ``fn``
may answer an item with an exception (an image that does not decode): that item's
request raises it, the others get their results.

A batch never mixes bundles: it takes only the pending items that hold the same
bundle reference as the oldest one (a request keeps the bundle it took at its
start, see ``deps.get_bundle``); items that took another bundle wait for the next
batch. So every answer comes from the bundle whose ``model_version`` it carries,
even while a reload swaps bundles.

All batchers share one single-thread executor: forward passes run one at a time,
each with all of torch's intra-op threads, instead of competing for the cores.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from core.bundles import LoadedBundle

log = logging.getLogger("service")

SATURATED = 10  # a batch that took this many max_waits: the model is the bottleneck, do not wait

In = TypeVar("In")
Out = TypeVar("Out")
# fn(bundle, items) -> one result per item, in order, or the exception that item's request
# should raise. Blocking: runs in the model thread.
BatchFn = Callable[[LoadedBundle, Sequence[In]], Sequence[Out | BaseException]]


@dataclass(eq=False)
class _Pending(Generic[In, Out]):
    bundle: LoadedBundle
    item: In
    future: asyncio.Future[Out] = field(repr=False)


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        fn: BatchFn[In, Out],
        executor: Executor,
        *,
        max_size: int,
        max_wait: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.fn, self.executor = fn, executor
        self.max_size, self.max_wait = max_size, max_wait
        self.on_batch = on_batch  # observes each batch's size (the metrics histogram)
        self._pending: deque[_Pending[In, Out]] = deque()
        self._arrived = asyncio.Event()
        self._coming = 0  # requests inside incoming(): they will submit soon
        self._task: asyncio.Task[None] | None = None
        self._last_run = 0.0  # seconds the last batch took in the model thread
        self._demand = 0  # items pending when the last batch was taken (at most max_size)

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around a request's work before ``submit`` (preparing its upload): a batch being formed waits for it."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            self._arrived.set()  # submitted next, or failed: either way the batch need not wait for it

    async def submit(self, bundle: LoadedBundle, item: In) -> Out:
        """``fn``'s result for ``item`` on ``bundle``, computed in a batch with other requests'."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():  # started lazily, inside the serving loop
            self._task = loop.create_task(self._run(), name="batcher")
        future: asyncio.Future[Out] = loop.create_future()
        self._pending.append(_Pending(bundle, item, future))
        self._arrived.set()
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for p in self._pending:
            p.future.cancel()

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
            return True
        except asyncio.TimeoutError:  # the builtin TimeoutError only from 3.11
            return False

    def _worth_waiting(self) -> bool:
        """Whether the batch about to go should wait (up to ``max_wait``) for more items."""
        if self._last_run >= SATURATED * self.max_wait:  # the model is the bottleneck
            return len(self._pending) < self._demand
        return len(self._pending) < self.max_size and self._coming > 0

    def _take_batch(self) -> list[_Pending[In, Out]]:
        """Up to ``max_size`` pending items, oldest first, all holding the oldest item's bundle."""
        bundle = self._pending[0].bundle
        batch, rest = [], deque()
        for p in self._pending:
            (batch if p.bundle is bundle and len(batch) < self.max_size else rest).append(p)
        self._pending = rest
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                await self._wait_for_arrival(None)
            deadline = loop.time() + self.max_wait
            while self._worth_waiting() and (left := deadline - loop.time()) > 0:
                if not await self._wait_for_arrival(left):
                    break
            self._demand = min(self.max_size, len(self._pending))
            batch = self._take_batch()
            batch = [p for p in batch if not p.future.done()]  # clients that went away
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                started = loop.time()
                results = await loop.run_in_executor(self.executor, self.fn, batch[0].bundle, [p.item for p in batch])
                self._last_run = loop.time() - started
            except Exception as e:  # noqa: BLE001 - a bug in fn fails this batch's requests, not the batcher
                log.exception("batched %s failed", getattr(self.fn, "__name__", "work"))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, result in zip(batch, results):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)


@dataclass
class Batchers:
    """The app's batchers by kind; built by ``create_app``, closed by its lifespan."""

    by_kind: dict[str, Batcher[Any, Any]]
    executor: Executor  # the model thread
    decoders: Executor | None = None  # the threads a batch's uploads are decoded over, if more than the model thread

    def __getitem__(self, kind: str) -> Batcher[Any, Any]:
        return self.by_kind[kind]

    async def close(self) -> None:
        for b in self.by_kind.values():
            await b.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.decoders is not None:
            self.decoders.shutdown(wait=False, cancel_futures=True)
