"""Background work that lives as long as a service: loops stopped by an event.

* :func:`wait_for_stop` sleeps until a deadline or until ``stop`` is set, whichever
  comes first, so a loop between rounds never delays shutdown;
  :func:`wait_for_wake` also returns when the loop is woken (new work committed).
* :func:`periodic` is an aiohttp ``cleanup_ctx`` that runs one housekeeping round
  every few seconds (expired holds, expired codes and tokens) from start-up to
  shutdown.
* :func:`drain` is one for a work queue: it takes batches back to back while there
  are any, and once the queue is empty waits to be woken, polling every ``idle``
  seconds for work another process added.
* :func:`background` is the ``cleanup_ctx`` both are made of: any ``run(app, stop)``
  as a named task from start-up until shutdown, which waits for it to return.
* :func:`report_failure` is how every retrying loop of the platform logs a failed
  round: one warning line when a dependency is down, the traceback otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeAlias

from aiohttp import web

from lastro.core.backoff import full_jitter
from lastro.core.outages import dependency_outage

log = logging.getLogger(__name__)

CleanupContext: TypeAlias = Callable[[web.Application], AsyncIterator[None]]


async def wait_for_stop(stop: asyncio.Event, seconds: float) -> None:
    """Return after ``seconds``, or as soon as ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def wait_for_wake(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Return when ``wake`` or ``stop`` is set, or after ``seconds``."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


def periodic(
    name: str, work: Callable[[web.Application], Awaitable[None]], interval: float
) -> CleanupContext:
    """A ``cleanup_ctx`` running ``work(app)`` every ``interval`` seconds as the task
    ``name``, from start-up until shutdown.

    A failed round is logged (one warning line when a dependency is down, the
    traceback otherwise) and the next one retries, so housekeeping never takes the
    service down; shutdown waits for the round in progress to finish.
    """

    async def rounds(app: web.Application, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await work(app)
            except Exception as error:
                report_failure(name, error, "the next round retries")
            await wait_for_stop(stop, interval)

    return background(name, rounds)


def drain(
    name: str,
    work: Callable[[web.Application], Awaitable[int]],
    idle: float,
    wake: Callable[[web.Application], asyncio.Event] | None = None,
) -> CleanupContext:
    """A ``cleanup_ctx`` running ``work(app)`` (one batch; returns how many items it
    handled) back to back while it finds work, then again when ``wake(app)`` is set
    (by whoever committed new work in this process) or after ``idle`` seconds (work
    another process committed), as the task ``name``, from start-up until shutdown.

    A failed batch is logged (:func:`report_failure`) and retried after a full-jitter
    backoff (0.5 s doubling up to 10 s), so a database or broker outage never ends the
    loop; shutdown waits for the batch in progress.
    """

    async def batches(app: web.Application, stop: asyncio.Event) -> None:
        woken = asyncio.Event() if wake is None else wake(app)
        failures = 0
        while not stop.is_set():
            woken.clear()  # work committed from now on wakes the next wait
            try:
                handled = await work(app)
            except Exception as error:
                failures += 1
                report_failure(name, error, "retrying")
                await wait_for_stop(stop, full_jitter(failures, base=0.5, cap=10.0))
                continue
            failures = 0
            if not handled:
                await wait_for_wake(stop, woken, idle)

    return background(name, batches)


def background(
    name: str, run: Callable[[web.Application, asyncio.Event], Coroutine[Any, Any, None]]
) -> CleanupContext:
    """A ``cleanup_ctx`` running ``run(app, stop)`` as the task ``name`` from start-up
    until shutdown, which sets ``stop`` and waits for ``run`` to return."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(run(app, stop), name=name)
        try:
            yield
        finally:
            stop.set()
            await task

    return context


def report_failure(name: str, error: BaseException, then: str) -> None:
    """Log that a round of the background work ``name`` failed with ``error`` and what
    happens ``then`` ("retrying", "restarting it").

    A dependency that is down (:func:`~lastro.core.outages.dependency_outage`: the
    database, Kafka, Redis, the KMS, another service) is one warning line naming it,
    repeated each round until it is back: the outage is expected, its own metrics and
    alerts report it, and a traceback per retry would bury everything else in the log.
    Anything else is a defect of ours and is logged with its traceback.
    """
    outage = dependency_outage(error)
    if outage is None:
        log.error("%s failed; %s", name, then, exc_info=error)
    else:
        log.warning("%s: %s unavailable (%s); %s", name, outage.extra["dependency"], error, then)
