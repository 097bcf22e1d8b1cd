"""Per-customer and per-counterparty profile state, updated by transaction events.

A profile is what fraud remembers about one party: how much and how often it
pays and receives (sliding windows of 1 min, 10 min, 1 h and 24 h, per currency),
the exponentially weighted mean and variance of its (log) amounts, the devices, IPs,
countries and counterparties it has used, its last location and time, and short
rings of recent flows for the mule and round-tripping detectors.

Profiles live in Redis, so every collection is bounded (least recently seen
entries are evicted first) and :meth:`CustomerProfile.to_bytes` is compact,
versioned JSON. Device ids, IPs, counterparties and senders are kept as 64-bit
BLAKE2b digests: a fixed size whatever the input, and no raw identifier in the
store (pseudonymous, not anonymous: the digest of an IP can be found by trying
them all). Times are Unix seconds. Amounts are integer minor units; only the
statistics over amounts (mean, variance) are floats.

Nothing here does I/O or reads a clock: :meth:`apply` takes the event, whose
``occurred_at`` is the profile's notion of time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from lastro.fraud.domain.transactions import Status, Transaction, TransactionEvent

FORMAT_VERSION: Final = 1

WINDOWS: Final[dict[str, tuple[int, int]]] = {
    "1m": (60, 5),
    "10m": (600, 60),
    "1h": (3600, 300),
    "24h": (86400, 3600),
}
"""Window name → (span, bucket width) in seconds; counts are exact to one bucket width."""

EWMA_MIN_ALPHA: Final = 1 / 64
"""Amount statistics weigh the first 64 amounts equally (Welford), then decay (EWMA)."""

RECENT_SPAN: Final = 72 * 3600
MAX_CURRENCIES: Final = 4
MAX_RECENT: Final = 32
MAX_NEAR_THRESHOLD: Final = 16
MAX_ALERT_KINDS: Final = 16
CAPS: Final[dict[str, int]] = {
    "devices": 16,
    "ips": 32,
    "countries": 16,
    "counterparties": 64,
    "senders": 64,
}

MOVED: Final = frozenset({Status.POSTED})
"""Statuses at which money has moved and the profiles learn from the transaction."""


class ProfileDecodeError(ValueError):
    """Stored profile bytes that are not a profile this code can read."""


def digest(value: str) -> str:
    """A 64-bit BLAKE2b digest (16 hex chars): bounded, and no raw identifier stored."""
    return hashlib.blake2b(value.encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class Window:
    """Count and sum over the last ``span`` seconds, kept in ``step``-second buckets."""

    span: int
    step: int
    buckets: dict[int, list[int]] = field(default_factory=dict)

    def add(self, at: int, amount: int) -> None:
        index = at // self.step
        bucket = self.buckets.setdefault(index, [0, 0])
        bucket[0] += 1
        bucket[1] += amount
        oldest = (at - self.span) // self.step
        for stale in [i for i in self.buckets if i < oldest]:
            del self.buckets[stale]

    def total(self, at: int) -> tuple[int, int]:
        """(count, sum) of the buckets overlapping ``(at - span, at]``."""
        oldest = (at - self.span) // self.step
        newest = at // self.step
        count = total = 0
        for index, (n, amount) in self.buckets.items():
            if oldest <= index <= newest:
                count += n
                total += amount
        return count, total


def _windows() -> dict[str, Window]:
    return {name: Window(span, step) for name, (span, step) in WINDOWS.items()}


@dataclass(slots=True)
class AmountStats:
    """Mean and variance of the natural log of amounts: Welford while few, then an EWMA.

    Payment amounts are roughly log-normal (many coffees, a monthly rent), so the
    statistics are kept on ``ln(amount)``: one rent does not drag the typical
    amount up the way it drags an arithmetic mean. With weight
    ``alpha = max(1/n, EWMA_MIN_ALPHA)`` the update is exactly Welford's
    population mean and variance for the first ``1/EWMA_MIN_ALPHA`` amounts and an
    exponentially weighted one after, so the profile follows a customer whose
    spending changes.
    """

    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    max: int = 0

    def add(self, amount: int) -> None:
        self.add_log(math.log(amount))
        self.max = max(self.max, amount)

    def add_log(self, value: float) -> None:
        """Add one value already on the log scale (``max`` is not touched)."""
        self.n += 1
        alpha = max(1 / self.n, EWMA_MIN_ALPHA)
        diff = value - self.mean
        increment = alpha * diff
        self.mean += increment
        self.var = (1 - alpha) * (self.var + diff * increment)

    @property
    def std(self) -> float:
        """Standard deviation of ln(amount)."""
        return math.sqrt(max(self.var, 0.0))

    @property
    def typical(self) -> float:
        """The geometric mean amount, in minor units (0 without history)."""
        return math.exp(self.mean) if self.n else 0.0


@dataclass(slots=True)
class Flow:
    """Money in one currency and one direction: windows and amount statistics."""

    windows: dict[str, Window] = field(default_factory=_windows)
    stats: AmountStats = field(default_factory=AmountStats)
    last_used: int = 0

    def add(self, at: int, amount: int) -> None:
        for window in self.windows.values():
            window.add(at, amount)
        self.stats.add(amount)
        self.last_used = at


@dataclass(slots=True)
class Seen:
    """Bounded map of identifiers → [first seen, last seen, times, largest amount]."""

    cap: int
    entries: dict[str, list[int]] = field(default_factory=dict)

    def add(self, key: str, at: int, amount: int = 0) -> None:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.cap:
                del self.entries[min(self.entries, key=lambda k: self.entries[k][1])]
            self.entries[key] = [at, at, 1, amount]
            return
        entry[1] = max(entry[1], at)
        entry[2] += 1
        entry[3] = max(entry[3], amount)

    def get(self, key: str) -> list[int] | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def active_since(self, since: int) -> int:
        """How many were seen at or after ``since``."""
        return sum(1 for entry in self.entries.values() if entry[1] >= since)

    def first_seen_since(self, since: int) -> int:
        """How many were seen for the first time at or after ``since``."""
        return sum(1 for entry in self.entries.values() if entry[0] >= since)


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One recent movement of money, for the mule and round-tripping detectors."""

    at: int
    party: str
    amount: int
    currency: str


@dataclass(slots=True)
class Flows:
    """One direction of a party's money: per-currency flows, parties, recent movements."""

    parties_cap: int
    currencies: dict[str, Flow] = field(default_factory=dict)
    parties: Seen = field(init=False)
    recent: list[FlowRecord] = field(default_factory=list)
    total: int = 0
    first_at: int | None = None

    def __post_init__(self) -> None:
        self.parties = Seen(self.parties_cap)

    def add(self, at: int, party: str | None, amount: int, currency: str) -> None:
        flow = self.currencies.get(currency)
        if flow is None:
            if len(self.currencies) >= MAX_CURRENCIES:
                del self.currencies[
                    min(self.currencies, key=lambda c: self.currencies[c].last_used)
                ]
            flow = self.currencies[currency] = Flow()
        flow.add(at, amount)
        self.total += 1
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        if party is not None:
            self.parties.add(party, at, amount)
            self.recent.append(FlowRecord(at, party, amount, currency))
        self.recent = [r for r in self.recent if r.at > at - RECENT_SPAN][-MAX_RECENT:]

    def count(self, window: str, at: int) -> int:
        return sum(flow.windows[window].total(at)[0] for flow in self.currencies.values())

    def sum(self, window: str, at: int, currency: str) -> int:
        flow = self.currencies.get(currency)
        return flow.windows[window].total(at)[1] if flow else 0

    def stats(self, currency: str) -> AmountStats:
        flow = self.currencies.get(currency)
        return flow.stats if flow else AmountStats()

    def within(self, since: int) -> Iterator[FlowRecord]:
        return (r for r in self.recent if r.at >= since)


@dataclass(frozen=True, slots=True)
class LastPlace:
    """Where the party's latest transaction with a known location was made."""

    at: int
    country: str | None
    lat: float
    lon: float
    transaction_id: str


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Reporting thresholds per currency (minor units) and the band just under them."""

    by_currency: dict[str, int] = field(
        default_factory=lambda: {"EUR": 1_000_000, "USD": 1_000_000, "GBP": 1_000_000}
    )
    band: float = 0.85
    """An amount in ``[band * threshold, threshold)`` is "just under" the threshold."""

    def just_under(self, amount: int, currency: str) -> bool:
        threshold = self.by_currency.get(currency)
        return threshold is not None and threshold * self.band <= amount < threshold


DEFAULT_THRESHOLDS: Final = Thresholds()


@dataclass(slots=True)
class CustomerProfile:
    """What fraud knows about one customer: its outgoing and incoming money and habits."""

    owner: str
    first_at: int | None = None
    outgoing: Flows = field(default_factory=lambda: Flows(CAPS["counterparties"]))
    incoming: Flows = field(default_factory=lambda: Flows(CAPS["senders"]))
    devices: Seen = field(default_factory=lambda: Seen(CAPS["devices"]))
    ips: Seen = field(default_factory=lambda: Seen(CAPS["ips"]))
    countries: Seen = field(default_factory=lambda: Seen(CAPS["countries"]))
    last_at: int | None = None
    """When the customer's latest own transaction was made."""
    last_place: LastPlace | None = None
    near_threshold: list[int] = field(default_factory=list)
    declined: Window = field(default_factory=lambda: Window(*WINDOWS["24h"]))
    alerted: dict[str, int] = field(default_factory=dict)
    """Typology → when the detectors last alerted on it (for their cool-down)."""

    def apply(self, event: TransactionEvent, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        """Learn from ``event`` if it concerns this customer and money moved (or was refused)."""
        txn = event.transaction
        at = txn.epoch_seconds
        if event.status is Status.DECLINED and txn.customer_id == self.owner:
            self.declined.add(at, txn.amount)
            return
        if event.status not in MOVED:
            return
        if txn.customer_id == self.owner:
            self._record_own(txn, at, thresholds)
        elif txn.counterparty_customer_id == self.owner:
            self.incoming.add(at, digest(txn.customer_id), txn.amount, txn.currency)
            self._touch(at)

    def _record_own(self, txn: Transaction, at: int, thresholds: Thresholds) -> None:
        party = txn.other_party
        if txn.is_incoming:
            self.incoming.add(at, digest(party) if party else None, txn.amount, txn.currency)
        else:
            self.outgoing.add(at, digest(party) if party else None, txn.amount, txn.currency)
        if thresholds.just_under(txn.amount, txn.currency):
            recent = [t for t in self.near_threshold if t > at - RECENT_SPAN]
            self.near_threshold = [*recent, at][-MAX_NEAR_THRESHOLD:]
        if txn.device_id:
            self.devices.add(digest(txn.device_id), at)
        if txn.ip:
            self.ips.add(digest(txn.ip), at)
        if txn.country:
            self.countries.add(txn.country, at)
        self.last_at = at if self.last_at is None else max(self.last_at, at)
        if txn.location is not None:
            self.last_place = LastPlace(
                at, txn.country, txn.location.lat, txn.location.lon, txn.transaction_id
            )
        self._touch(at)

    def _touch(self, at: int) -> None:
        self.first_at = at if self.first_at is None else min(self.first_at, at)

    def to_bytes(self) -> bytes:
        """Compact versioned JSON for Redis; bounded by the caps above (a few KiB)."""
        return _dumps({"v": FORMAT_VERSION, "k": "c", **_encode_customer(self)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> CustomerProfile:
        """The profile ``to_bytes`` wrote; raises ProfileDecodeError for anything else."""
        data = _loads(raw, "c")
        try:
            return _decode_customer(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProfileDecodeError(f"malformed customer profile: {exc!r}") from None


@dataclass(slots=True)
class CounterpartyProfile:
    """What fraud knows about the receiving side of payments: who pays it, how much,
    and how far above their own habits its senders pay it."""

    owner: str
    incoming: Flows = field(default_factory=lambda: Flows(CAPS["senders"]))
    lift: AmountStats = field(default_factory=AmountStats)
    """Statistics of ln(amount / the sender's typical amount) over the payments whose
    sender had a history (``sender_typical`` given to :meth:`apply`): a scam's mule
    account takes victims' savings, each many times what that victim usually pays; a
    shop, a landlord or a collection takes what its payers usually pay, or a few times it."""

    def apply(self, event: TransactionEvent, sender_typical: float = 0.0) -> None:
        """Learn from a posted payment whose other side is this counterparty;
        ``sender_typical`` is the payer's typical amount in the payment's currency
        before it (0 when the payer has too little history to have one)."""
        txn = event.transaction
        if event.status not in MOVED or txn.is_incoming or txn.other_party != self.owner:
            return
        self.incoming.add(txn.epoch_seconds, digest(txn.customer_id), txn.amount, txn.currency)
        if sender_typical > 0:
            self.lift.add_log(math.log(txn.amount / sender_typical))

    def to_bytes(self) -> bytes:
        lift = self.lift
        return _dumps(
            {
                "v": FORMAT_VERSION,
                "k": "p",
                "o": self.owner,
                "i": _enc_flows(self.incoming),
                "l": [lift.n, lift.mean, lift.var],
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> CounterpartyProfile:
        """The profile ``to_bytes`` wrote (one written before ``lift`` existed reads
        with no lift); raises ProfileDecodeError for anything else."""
        data = _loads(raw, "p")
        try:
            n, mean, var = data.get("l", [0, 0.0, 0.0])
            lift = AmountStats(int(n), float(mean), float(var))
            return cls(str(data["o"]), _dec_flows(data["i"], CAPS["senders"]), lift)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ProfileDecodeError(f"malformed counterparty profile: {exc!r}") from None


# --- serialisation ------------------------------------------------------------------


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def _loads(raw: bytes, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileDecodeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION or data.get("k") != kind:
        raise ProfileDecodeError(f"not a version-{FORMAT_VERSION} profile of kind {kind!r}")
    return data


def _enc_window(window: Window) -> list[list[int]]:
    return [[index, count, amount] for index, (count, amount) in sorted(window.buckets.items())]


def _dec_windows(data: dict[str, Any]) -> dict[str, Window]:
    windows = _windows()
    for name, window in windows.items():
        window.buckets = {int(i): [int(c), int(a)] for i, c, a in data[name]}
    return windows


def _enc_flows(flows: Flows) -> dict[str, Any]:
    return {
        "c": {
            currency: {
                "w": {name: _enc_window(w) for name, w in flow.windows.items()},
                "s": [flow.stats.n, flow.stats.mean, flow.stats.var, flow.stats.max],
                "u": flow.last_used,
            }
            for currency, flow in flows.currencies.items()
        },
        "p": flows.parties.entries,
        "r": [[r.at, r.party, r.amount, r.currency] for r in flows.recent],
        "t": flows.total,
        "f": flows.first_at,
    }


def _dec_flows(data: dict[str, Any], cap: int) -> Flows:
    flows = Flows(cap)
    for currency, raw in data["c"].items():
        n, mean, var, largest = raw["s"]
        stats = AmountStats(int(n), float(mean), float(var), int(largest))
        flows.currencies[str(currency)] = Flow(_dec_windows(raw["w"]), stats, int(raw["u"]))
    flows.parties.entries = _dec_entries(data["p"], cap)
    recent = [FlowRecord(int(a), str(p), int(m), str(c)) for a, p, m, c in data["r"]]
    flows.recent = recent[-MAX_RECENT:]
    flows.total = int(data["t"])
    flows.first_at = None if data["f"] is None else int(data["f"])
    return flows


def _dec_entries(data: dict[str, Any], cap: int) -> dict[str, list[int]]:
    entries = {str(k): [int(x) for x in v] for k, v in data.items()}
    if len(entries) > cap or any(len(v) != 4 for v in entries.values()):
        raise ValueError("seen-set over its cap or with malformed entries")
    return entries


def _enc_seen(seen: Seen) -> dict[str, list[int]]:
    return seen.entries


def _seen(data: dict[str, Any], name: str) -> Seen:
    return Seen(CAPS[name], _dec_entries(data, CAPS[name]))


def _encode_customer(profile: CustomerProfile) -> dict[str, Any]:
    place = profile.last_place
    return {
        "o": profile.owner,
        "f": profile.first_at,
        "out": _enc_flows(profile.outgoing),
        "in": _enc_flows(profile.incoming),
        "d": _enc_seen(profile.devices),
        "ip": _enc_seen(profile.ips),
        "cc": _enc_seen(profile.countries),
        "t": profile.last_at,
        "l": None
        if place is None
        else [place.at, place.country, place.lat, place.lon, place.transaction_id],
        "nt": profile.near_threshold,
        "x": _enc_window(profile.declined),
        "a": profile.alerted,
    }


def _decode_customer(data: dict[str, Any]) -> CustomerProfile:
    place = data["l"]
    declined = Window(*WINDOWS["24h"])
    declined.buckets = {int(i): [int(c), int(a)] for i, c, a in data["x"]}
    return CustomerProfile(
        owner=str(data["o"]),
        first_at=None if data["f"] is None else int(data["f"]),
        outgoing=_dec_flows(data["out"], CAPS["counterparties"]),
        incoming=_dec_flows(data["in"], CAPS["senders"]),
        devices=_seen(data["d"], "devices"),
        ips=_seen(data["ip"], "ips"),
        countries=_seen(data["cc"], "countries"),
        last_at=None if data["t"] is None else int(data["t"]),
        last_place=None
        if place is None
        else LastPlace(
            int(place[0]),
            None if place[1] is None else str(place[1]),
            float(place[2]),
            float(place[3]),
            str(place[4]),
        ),
        near_threshold=[int(t) for t in data["nt"]][-MAX_NEAR_THRESHOLD:],
        declined=declined,
        alerted=_dec_alerted(data["a"]),
    )


def _dec_alerted(data: dict[str, Any]) -> dict[str, int]:
    if len(data) > MAX_ALERT_KINDS:
        raise ValueError("more alert cool-downs than typologies")
    return {str(k): int(v) for k, v in data.items()}
