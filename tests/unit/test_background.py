"""How retrying background loops report a failed round (`core/background.py`)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.exceptions
from aiohttp import web

from lastro.core.background import drain, report_failure


def test_a_dependency_outage_is_one_warning_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="lastro.core.background"):
        report_failure(
            "notifications-delivery", redis.exceptions.ConnectionError("gone"), "retrying"
        )
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "notifications-delivery: redis unavailable (gone); retrying"
    assert record.exc_info is None


def test_a_defect_is_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("customer_id")
    except KeyError as error:
        failure = error
    with caplog.at_level(logging.INFO, logger="lastro.core.background"):
        report_failure("freeze delivery round", failure, "the next one retries")
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "freeze delivery round failed; the next one retries"
    assert record.exc_info is not None and record.exc_info[1] is failure


async def test_drain_reports_an_outage_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    """A batch that meets Redis down is retried after a backoff; the loop survives it."""
    rounds: list[str] = []
    done = asyncio.Event()

    async def work(app: web.Application) -> int:
        if not rounds:
            rounds.append("outage")
            raise redis.exceptions.ConnectionError("refused")
        rounds.append("ok")
        done.set()
        return 0

    context = drain("test-drain", work, idle=60.0)(web.Application())
    with caplog.at_level(logging.INFO, logger="lastro.core.background"):
        await anext(context)
        await asyncio.wait_for(done.wait(), timeout=10)
        with pytest.raises(StopAsyncIteration):
            await anext(context)
    assert rounds == ["outage", "ok"]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "test-drain: redis unavailable (refused); retrying")
    ]
