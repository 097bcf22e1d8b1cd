"""Identifiers of the account service's resources: typed, Stripe-style prefixed
(``acc_``, ``pst_``, ``hold_``, ``cus_``) and minted by :mod:`lastro.core.ids` at the
time the use case's clock gives, so they sort by creation time."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, NewType

from lastro.core import ids

AccountId = NewType("AccountId", str)
PostingId = NewType("PostingId", str)
HoldId = NewType("HoldId", str)
CustomerId = NewType("CustomerId", str)

RandomBytes = Callable[[int], bytes]
"""A source of ``n`` random bytes, like :func:`os.urandom`; injectable for tests."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _at(now: datetime) -> Callable[[], int]:
    millis = (now - _EPOCH) // timedelta(milliseconds=1)
    return lambda: millis


def new_account_id(now: datetime, random_bytes: RandomBytes = os.urandom) -> AccountId:
    return AccountId(ids.new_id("acc", now_ms=_at(now), random_bytes=random_bytes))


def new_posting_id(now: datetime, random_bytes: RandomBytes = os.urandom) -> PostingId:
    return PostingId(ids.new_id("pst", now_ms=_at(now), random_bytes=random_bytes))


def new_hold_id(now: datetime, random_bytes: RandomBytes = os.urandom) -> HoldId:
    return HoldId(ids.new_id("hold", now_ms=_at(now), random_bytes=random_bytes))


def new_customer_id(now: datetime, random_bytes: RandomBytes = os.urandom) -> CustomerId:
    return CustomerId(ids.new_id("cus", now_ms=_at(now), random_bytes=random_bytes))
