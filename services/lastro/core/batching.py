"""Group commit: many callers' requests settled by one unit of work.

:class:`GroupCommitter` queues each submitted request with a future and runs
``settle`` over everything queued so far (at most ``max_batch``), as soon as the
previous batch finished (or, with ``max_concurrent`` > 1, as soon as a drain is
free): there is no timer and no linger, so a lone request waits for nothing,
while under load one transaction carries many requests and its commit (the
fsync) is shared by all of them (TigerBeetle-style batching).

Guarantees: ``settle`` returns one outcome per request, in order; a caller's
future is resolved only after ``settle`` returned, i.e. after its transaction
committed. A request whose caller was cancelled before its batch started is
dropped unsettled. Drain tasks exist only while work is queued, so an idle
committer holds no task and no connection; :meth:`close` waits for queued work
and refuses new requests.

Used by the ledger's postings, fraud's screening decisions, and the transaction
service's accept path and worker state writes.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

Settle = Callable[[Sequence[Request]], Awaitable[Sequence[Result | BaseException]]]


class GroupCommitter(Generic[Request, Result]):
    """Batches concurrent :meth:`submit` calls into calls of ``settle``."""

    def __init__(
        self, settle: Settle[Request, Result], *, max_batch: int = 128, max_concurrent: int = 1
    ) -> None:
        if max_batch < 1 or max_concurrent < 1:
            raise ValueError("max_batch and max_concurrent must be at least 1")
        self._settle = settle
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._queue: deque[tuple[Request, asyncio.Future[Result]]] = deque()
        self._drains: set[asyncio.Task[None]] = set()
        self._starting = 0
        self._closed = False

    async def submit(self, request: Request) -> Result:
        """Settle ``request`` in the next batch; its result, or its exception raised."""
        if self._closed:
            raise RuntimeError("the group committer is closed")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if not self._starting and len(self._drains) < self._max_concurrent:
            # Every running drain is busy settling: start another. A fresh context,
            # because a drain serves every caller and must not inherit the first
            # caller's trace or other context variables.
            self._starting += 1
            drain = asyncio.create_task(
                self._run(), name="group-commit", context=contextvars.Context()
            )
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await future

    async def close(self) -> None:
        """Refuse new requests and wait until every queued one is settled."""
        self._closed = True
        while self._drains:
            await asyncio.shield(asyncio.gather(*self._drains))

    def _take(self) -> list[tuple[Request, asyncio.Future[Result]]]:
        batch: list[tuple[Request, asyncio.Future[Result]]] = []
        while self._queue and len(batch) < self._max_batch:
            request, future = self._queue.popleft()
            if not future.done():
                batch.append((request, future))
        return batch

    async def _run(self) -> None:
        self._starting -= 1
        batch: list[tuple[Request, asyncio.Future[Result]]] = []
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                outcomes: Sequence[Result | BaseException]
                try:
                    outcomes = await self._settle([request for request, _ in batch])
                except Exception as error:  # settle broke its contract: fail this batch only
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        finally:
            # Leave the running set before any await, so a request queued from now on
            # starts a new drain instead of waiting for this finished one.
            self._drains.discard(asyncio.current_task())
            # Only reached with work left when the drain task itself was cancelled
            # (event loop shutdown): its callers must not wait forever.
            for _, future in [*batch, *self._queue]:
                future.cancel()
            self._queue.clear()
