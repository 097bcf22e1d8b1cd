"""GroupCommitter: concurrent requests settled together, each with its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from lastro.core.batching import GroupCommitter


class Recorder:
    """A settle function that records its batches; odd numbers are refused."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay

    async def __call__(self, batch: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(batch))
        await asyncio.sleep(self.delay)
        return [ValueError(n) if n % 2 else n * 10 for n in batch]


async def test_concurrent_requests_share_one_batch_with_their_own_outcomes() -> None:
    settle = Recorder()
    committer = GroupCommitter(settle)
    results = await asyncio.gather(*(committer.submit(n) for n in range(6)), return_exceptions=True)
    assert settle.batches == [[0, 1, 2, 3, 4, 5]]
    assert [r if isinstance(r, int) else str(r) for r in results] == [0, "1", 20, "3", 40, "5"]


async def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    settle = Recorder(delay=0.01)
    committer = GroupCommitter(settle, max_batch=3)
    first = asyncio.ensure_future(committer.submit(0))
    await asyncio.sleep(0.001)
    rest = [asyncio.ensure_future(committer.submit(n)) for n in (2, 4, 6, 8)]
    assert await first == 0
    assert await asyncio.gather(*rest) == [20, 40, 60, 80]
    assert settle.batches == [[0], [2, 4, 6], [8]]


async def test_cancelled_caller_is_dropped_before_its_batch() -> None:
    settle = Recorder(delay=0.01)
    committer = GroupCommitter(settle)
    first = asyncio.ensure_future(committer.submit(0))
    await asyncio.sleep(0.001)
    gone = asyncio.ensure_future(committer.submit(2))
    kept = asyncio.ensure_future(committer.submit(4))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await first, await kept) == (0, 40)
    assert settle.batches == [[0], [4]]


async def test_a_broken_settle_fails_only_its_batch() -> None:
    calls = 0

    async def settle(batch: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database went away")
        return list(batch)

    committer = GroupCommitter(settle)
    with pytest.raises(RuntimeError, match="went away"):
        await committer.submit(1)
    assert await committer.submit(2) == 2


async def test_close_settles_queued_requests_then_refuses() -> None:
    settle = Recorder(delay=0.01)
    committer = GroupCommitter(settle)
    queued = [asyncio.ensure_future(committer.submit(n)) for n in (2, 4)]
    await asyncio.sleep(0)
    await committer.close()
    assert [task.result() for task in queued] == [20, 40]
    with pytest.raises(RuntimeError, match="closed"):
        await committer.submit(6)


async def test_second_drain_settles_while_the_first_batch_is_in_flight() -> None:
    settle = Recorder(delay=0.02)
    committer = GroupCommitter(settle, max_concurrent=2)
    first = asyncio.ensure_future(committer.submit(0))
    await asyncio.sleep(0.001)
    second = [asyncio.ensure_future(committer.submit(n)) for n in (2, 4)]
    await asyncio.sleep(0.001)
    assert settle.batches == [[0], [2, 4]]  # both in flight at once
    assert await first == 0 and await asyncio.gather(*second) == [20, 40]
    await committer.close()
