"""The per-customer and per-counterparty profiles in Redis.

Keys (``<prefix>`` is ``lastro:fraud`` in production, a fresh one per test):

``<prefix>:c:<customer id>``        a :class:`CustomerProfile` (compact versioned JSON)
``<prefix>:p:<counterparty id>``    a :class:`CounterpartyProfile`
``<prefix>:applied:<event id>``     the marker of an applied event: the alerts it raised
``<prefix>:updated``                sorted set: customer id → when its profile last changed

Screening reads its two profiles with one ``MGET`` (one round trip) and never
writes. The analyser applies an event with :meth:`ProfileStore.apply_event`: it
reads the marker and the profiles with one ``MGET``, runs the detectors in
Python, then one Lua script writes the new profiles *and* the marker, but only if
no marker exists yet and every profile is still what was read (otherwise the
event is recomputed from the new state). So an event is applied to the profiles
exactly once however often it is delivered, and a redelivery gets back the alerts
of the first application, even if the database transaction that was to record
them never committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from lastro.core.observability import metrics_registry
from lastro.fraud.domain.decision import Severity
from lastro.fraud.domain.detectors import Alert, Typology
from lastro.fraud.domain.profiles import (
    CounterpartyProfile,
    CustomerProfile,
    ProfileDecodeError,
)
from lastro.fraud.domain.transactions import Transaction, TransactionEvent

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "lastro:fraud"
MARKER_TTL_SECONDS: Final = 7 * 86400
"""An applied-event marker outlives any redelivery of an event whose inbox row did not
commit (one soon after, from an uncommitted offset); once it committed, the inbox row
stops redeliveries for as long as Kafka keeps the event (``core.privacy.REDELIVERY_WINDOW``)."""
APPLY_ATTEMPTS: Final = 8

UNREADABLE = Counter(
    "lastro_fraud_profiles_unreadable_total",
    "Stored profiles that could not be decoded and were treated as new",
    ["kind"],
    registry=metrics_registry(),
)
CONFLICTS = Counter(
    "lastro_fraud_profile_conflicts_total",
    "Profile writes retried because another event changed a profile first",
    registry=metrics_registry(),
)

# KEYS: marker, updated index, then the profiles. ARGV: marker value, marker ttl,
# profile ttl, now, then per profile: expected present (0/1), expected value, new
# value, member of the updated index ('' for none).
_APPLY: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('GET', KEYS[1])}
end
local n = #KEYS - 2
for i = 1, n do
  local base = 5 + 4 * (i - 1)
  local current = redis.call('GET', KEYS[2 + i])
  if ARGV[base] == '1' then
    if current ~= ARGV[base + 1] then return {-1, KEYS[2 + i]} end
  elseif current then
    return {-1, KEYS[2 + i]}
  end
end
for i = 1, n do
  local base = 5 + 4 * (i - 1)
  redis.call('SET', KEYS[2 + i], ARGV[base + 2], 'EX', ARGV[3])
  if ARGV[base + 3] ~= '' then
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[base + 3])
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {1, ARGV[1]}
"""


class ProfilesUnavailable(Exception):
    """Redis did not answer in time, or refused."""


class ProfileConflict(Exception):
    """The profiles kept changing under an event after every attempt."""


Detect = Callable[
    [CustomerProfile | None, CustomerProfile | None, CounterpartyProfile | None], list[Alert]
]
"""Runs the detectors on (payer, receiver, counterparty) and applies the event to them."""


@dataclass(frozen=True)
class _Slot:
    """One profile an event touches: its key, what was read, and the member of the
    updated index it refreshes."""

    key: str
    raw: bytes | None
    member: str


def alert_to_json(alert: Alert) -> dict[str, Any]:
    return {
        "typology": alert.typology.value,
        "severity": alert.severity.value,
        "customer_id": alert.customer_id,
        "account_id": alert.account_id,
        "transaction_id": alert.transaction_id,
        "detector_id": alert.detector_id,
        "evidence": alert.evidence,
        "rule_ids": list(alert.rule_ids),
        "related": list(alert.related),
    }


def alert_from_json(data: dict[str, Any]) -> Alert:
    return Alert(
        typology=Typology(data["typology"]),
        severity=Severity(data["severity"]),
        customer_id=str(data["customer_id"]),
        account_id=data["account_id"],
        transaction_id=str(data["transaction_id"]),
        detector_id=str(data["detector_id"]),
        evidence=dict(data["evidence"]),
        rule_ids=tuple(data["rule_ids"]),
        related=tuple(data["related"]),
    )


def _alerts_from_marker(raw: bytes | str) -> list[Alert]:
    return [alert_from_json(item) for item in json.loads(raw)]


class ProfileStore:
    """Reads profiles for screening; applies transaction events to them exactly once."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        profile_ttl_seconds: int = 180 * 86400,
        read_timeout: float = 0.2,
        write_timeout: float = 5.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = profile_ttl_seconds
        self._timeout = read_timeout
        self._write_timeout = write_timeout
        self._apply = redis.register_script(_APPLY)

    def customer_key(self, customer_id: str) -> str:
        return f"{self._prefix}:c:{customer_id}"

    def counterparty_key(self, party: str) -> str:
        return f"{self._prefix}:p:{party}"

    def marker_key(self, event_id: str) -> str:
        return f"{self._prefix}:applied:{event_id}"

    @property
    def updated_key(self) -> str:
        return f"{self._prefix}:updated"

    # ------------------------------------------------------------ screening

    async def for_screening(
        self, txn: Transaction
    ) -> tuple[CustomerProfile, CounterpartyProfile | None]:
        """The payer's profile and the receiving side's (None when the transaction
        names none), in one round trip; a party never seen gets an empty profile.
        Raises ProfilesUnavailable."""
        party = None if txn.is_incoming else txn.other_party
        keys = [self.customer_key(txn.customer_id)]
        if party is not None:
            keys.append(self.counterparty_key(party))
        try:
            async with asyncio.timeout(self._timeout):
                raw = cast(list[bytes | None], await self._redis.mget(keys))
        except (TimeoutError, RedisError, OSError) as exc:
            raise ProfilesUnavailable(f"profiles unreadable: {exc!r}") from exc
        customer = _customer(raw[0], txn.customer_id)
        counterparty = None if party is None else _counterparty(raw[1], party)
        return customer, counterparty

    # ------------------------------------------------------------ analyser

    async def apply_event(
        self, event_id: str, event: TransactionEvent, detect: Detect
    ) -> list[Alert]:
        """Apply ``event`` to the profiles it concerns, once; the alerts it raised.

        A second call for the same ``event_id`` (a redelivery) changes nothing and
        returns the alerts of the first. Raises ProfilesUnavailable, ProfileConflict.
        """
        txn = event.transaction
        receiver = txn.counterparty_customer_id
        if receiver == txn.customer_id:
            receiver = None
        party = None if txn.is_incoming else txn.other_party
        keys = [self.customer_key(txn.customer_id)]
        members = [txn.customer_id]
        if receiver is not None:
            keys.append(self.customer_key(receiver))
            members.append(receiver)
        if party is not None:
            keys.append(self.counterparty_key(party))
            members.append("")
        marker = self.marker_key(event_id)
        for _ in range(APPLY_ATTEMPTS):
            try:
                async with asyncio.timeout(self._write_timeout):
                    found = cast(list[bytes | None], await self._redis.mget([marker, *keys]))
            except (TimeoutError, RedisError, OSError) as exc:
                raise ProfilesUnavailable(f"profiles unreadable: {exc!r}") from exc
            if found[0] is not None:
                return _alerts_from_marker(found[0])
            slots = [_Slot(k, r, m) for k, r, m in zip(keys, found[1:], members, strict=True)]
            payer = _customer(slots[0].raw, txn.customer_id)
            received = _customer(slots[1].raw, receiver) if receiver is not None else None
            paid = _counterparty(slots[-1].raw, party) if party is not None else None
            alerts = detect(payer, received, paid)
            new = [payer.to_bytes()]
            if received is not None:
                new.append(received.to_bytes())
            if paid is not None:
                new.append(paid.to_bytes())
            value = json.dumps([alert_to_json(a) for a in alerts], separators=(",", ":"))
            outcome = await self._write(marker, slots, new, value, txn.epoch_seconds)
            if outcome[0] == 1:
                return alerts
            if outcome[0] == 0:
                return _alerts_from_marker(outcome[1])
            CONFLICTS.inc()
        raise ProfileConflict(f"profiles of event {event_id} kept changing")

    async def _write(
        self, marker: str, slots: Sequence[_Slot], new: Sequence[bytes], value: str, now: int
    ) -> list[Any]:
        args: list[Any] = [value, MARKER_TTL_SECONDS, self._ttl, now]
        for slot, data in zip(slots, new, strict=True):
            args += ["1" if slot.raw is not None else "0", slot.raw or b"", data, slot.member]
        try:
            async with asyncio.timeout(self._write_timeout):
                result: list[Any] = await self._apply(
                    keys=[marker, self.updated_key, *(s.key for s in slots)], args=args
                )
        except (TimeoutError, RedisError, OSError) as exc:
            raise ProfilesUnavailable(f"profiles not written: {exc!r}") from exc
        return [int(result[0]), result[1]]

    # ------------------------------------------------------------ privacy

    async def customer(self, customer_id: str) -> CustomerProfile | None:
        raw = cast(bytes | None, await self._redis.get(self.customer_key(customer_id)))
        return None if raw is None else _customer(raw, customer_id)

    async def erase(self, customer_id: str) -> int:
        """Delete the customer's profile; how many profiles were deleted (0 or 1)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.customer_key(customer_id))
            pipe.zrem(self.updated_key, customer_id)
            deleted, _ = await pipe.execute()
        return int(deleted)

    async def age_out(self, cutoff: int, *, dry_run: bool) -> int:
        """Delete customer profiles not updated since ``cutoff`` (Unix seconds)."""
        members = cast(
            list[bytes], await self._redis.zrangebyscore(self.updated_key, "-inf", f"({cutoff}")
        )
        stale = [member.decode() for member in members]
        if dry_run or not stale:
            existing = (
                await self._redis.exists(*(self.customer_key(c) for c in stale)) if stale else 0
            )
            return int(existing)
        deleted = 0
        for start in range(0, len(stale), 500):
            chunk = stale[start : start + 500]
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(self.customer_key(c) for c in chunk))
                pipe.zrem(self.updated_key, *chunk)
                removed, _ = await pipe.execute()
            deleted += int(removed)
        return deleted


def _customer(raw: bytes | None, owner: str) -> CustomerProfile:
    if raw is None:
        return CustomerProfile(owner)
    try:
        return CustomerProfile.from_bytes(raw)
    except ProfileDecodeError:
        UNREADABLE.labels("customer").inc()
        log.warning("unreadable customer profile treated as new", extra={"customer_id": owner})
        return CustomerProfile(owner)


def _counterparty(raw: bytes | None, owner: str) -> CounterpartyProfile:
    if raw is None:
        return CounterpartyProfile(owner)
    try:
        return CounterpartyProfile.from_bytes(raw)
    except ProfileDecodeError:
        UNREADABLE.labels("counterparty").inc()
        log.warning("unreadable counterparty profile treated as new")
        return CounterpartyProfile(owner)
