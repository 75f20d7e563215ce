"""The Batcher, in process with stand-in work: batches never mix bundles, results go back to their own
requests, and a failure fails only the requests it concerns."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from service.batching import Batcher


def test_a_batch_never_mixes_bundles() -> None:
    """In process, with a stand-in model: items that took different bundles go into different batches,
    each result goes back to its own request, and a failing batch fails only its own requests."""
    calls: list[tuple[object, list[int]]] = []

    def fn(bundle: object, items: list[int]) -> list[tuple[object, int]]:
        calls.append((bundle, list(items)))
        if -1 in items:
            raise ValueError("boom")
        return [(bundle, i) for i in items]

    old, new = object(), object()
    taken = [old, new, old, old, new, old, new, new, old, old]

    async def go() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(fn, executor, max_size=4, max_wait=0.05)
            results = await asyncio.gather(*(batcher.submit(b, i) for i, b in enumerate(taken)))
            assert results == [(b, i) for i, b in enumerate(taken)]
            failed = await asyncio.gather(batcher.submit(new, -1), batcher.submit(new, 5), return_exceptions=True)
            assert all(isinstance(e, ValueError) for e in failed)
            assert await batcher.submit(old, 7) == (old, 7)  # the batcher survived
            await batcher.close()

    asyncio.run(go())
    assert calls[:3] == [(old, [0, 2, 3, 5]), (new, [1, 4, 6, 7]), (old, [8, 9])]


def test_an_item_answered_with_an_exception_fails_only_its_own_request() -> None:
    """``fn`` may answer one item with an exception (an image that does not decode): that request
    raises it, the others of the batch get their results."""

    def fn(bundle: object, items: list[int]) -> list[int | BaseException]:
        return [ValueError(f"item {i}") if i < 0 else i * 10 for i in items]

    async def go() -> None:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(fn, executor, max_size=4, max_wait=0.05)
            got = await asyncio.gather(*(batcher.submit(None, i) for i in (1, -2, 3)), return_exceptions=True)
            assert got[0] == 10 and got[2] == 30
            assert isinstance(got[1], ValueError) and str(got[1]) == "item -2"
            await batcher.close()

    asyncio.run(go())


def test_a_request_on_its_way_is_waited_for_unless_the_model_is_the_bottleneck() -> None:
    """While a request is preparing its upload (``incoming``), a batch waits up to ``max_wait`` for it -- unless the
    last batch took at least SATURATED x max_wait: then it goes at once (requests arrive during the next pass anyway)."""
    import time

    from service.batching import SATURATED

    max_wait = 0.1
    slow = {"seconds": 0.0}
    started: list[float] = []

    def fn(bundle: object, items: list[int]) -> list[int]:
        started.append(time.perf_counter())
        time.sleep(slow["seconds"])
        return items

    async def dispatch_delay(batcher: Batcher) -> float:
        with batcher.incoming():  # a request on its way that never submits during the wait
            t = time.perf_counter()
            await batcher.submit(None, 1)
            return started[-1] - t

    async def go() -> tuple[float, float]:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(fn, executor, max_size=8, max_wait=max_wait)
            await batcher.submit(None, 0)  # a fast batch
            waited = await dispatch_delay(batcher)
            slow["seconds"] = SATURATED * max_wait
            await batcher.submit(None, 0)  # a batch that took SATURATED x max_wait
            slow["seconds"] = 0.0
            not_waited = await dispatch_delay(batcher)
            await batcher.close()
            return waited, not_waited

    waited, not_waited = asyncio.run(go())
    assert waited >= 0.8 * max_wait and not_waited < 0.5 * max_wait


def test_a_saturated_batcher_waits_for_as_many_items_as_its_last_batch_had() -> None:
    """While the model is the bottleneck, a batch waits up to ``max_wait`` until as many items are pending as
    the last batch was taken from (under load, the requests its answers released, on their way back), so
    a worker's connections do not split into two half-size batches taking turns; never longer than ``max_wait``."""
    import time

    from service.batching import SATURATED

    max_wait = 0.05
    slow = SATURATED * max_wait * 1.2
    batches: list[list[int]] = []

    def fn(bundle: object, items: list[int]) -> list[int]:
        batches.append(list(items))
        time.sleep(slow)
        return items

    async def later(batcher: Batcher, item: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return await batcher.submit(None, item)

    async def go() -> float:
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(fn, executor, max_size=8, max_wait=max_wait)
            await asyncio.gather(*(batcher.submit(None, i) for i in range(3)))  # a slow batch of 3
            # one item now, two more within the wait: one batch of 3 again, not a batch of 1 and one of 2
            await asyncio.gather(batcher.submit(None, 10), later(batcher, 11, max_wait / 10), later(batcher, 12, max_wait / 10))
            t = time.perf_counter()
            await batcher.submit(None, 20)  # the others never come: it goes after max_wait
            delay = time.perf_counter() - t - slow
            await batcher.close()
            return delay

    delay = asyncio.run(go())
    assert batches == [[0, 1, 2], [10, 11, 12], [20]]
    assert 0.8 * max_wait <= delay < 4 * max_wait
