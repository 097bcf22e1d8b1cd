"""CloudEvents 1.0 envelopes and their HMAC-SHA256 signatures.

Envelopes are structured-mode JSON. The signature extension ``signature`` is
``v<N>:<base64 HMAC-SHA256>`` over the canonical JSON of every other attribute
(sorted keys, no whitespace), keyed by version N of a Transit HMAC key that
services export from the KMS once at start; verification accepts every version
still held, so the key rotates without rejecting events in flight.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from opentelemetry import propagate

from lastro.core.ids import new_id

# Every topic the platform uses, with its partition count. Keys are the
# aggregate id (account, transaction), so ordering holds per aggregate.
TOPICS: Final[dict[str, int]] = {
    "lastro.platform.test": 3,
    "lastro.ledger": 6,
    "lastro.accounts": 3,
    "lastro.identity": 3,
    "lastro.transactions": 6,
    "lastro.transactions.commands": 6,
    "lastro.fraud": 3,
    "lastro.fraud.rules": 1,
    "lastro.notifications": 3,
    "lastro.deadletter": 1,
    # Every service's audit records, for a central store (core/audit.py streams them).
    "lastro.audit": 3,
}

# Topic-level configuration beyond the partition count, applied when a topic is
# created. The fraud rule log is compacted (latest record per rule id) and read from
# the beginning by every fraud replica; one partition keeps one order of changes.
TOPIC_CONFIGS: Final[dict[str, dict[str, str]]] = {
    "lastro.fraud.rules": {"cleanup.policy": "compact"},
}

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/cloudevents+json"
SIGNATURE_ATTR: Final = "signature"


class EventRejected(Exception):
    """An event failed envelope or signature checks; ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class CloudEvent:
    """A CloudEvents 1.0 event with JSON data."""

    type: str
    source: str
    data: Mapping[str, Any]
    subject: str | None = None
    id: str = field(default_factory=lambda: new_id("evt"))
    time: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    )
    traceparent: str | None = None

    def envelope(self) -> dict[str, Any]:
        """The structured-mode attributes, without a signature."""
        env: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": dict(self.data),
        }
        if self.subject is not None:
            env["subject"] = self.subject
        if self.traceparent is not None:
            env["traceparent"] = self.traceparent
        return env

    @classmethod
    def from_envelope(cls, env: Mapping[str, Any]) -> CloudEvent:
        required = ("specversion", "id", "source", "type", "data")
        missing = [name for name in required if name not in env]
        if missing:
            raise EventRejected("malformed", f"missing {', '.join(missing)}")
        if env["specversion"] != SPEC_VERSION or not isinstance(env["data"], dict):
            raise EventRejected("malformed", "not a CloudEvents 1.0 JSON event")
        return cls(
            type=str(env["type"]),
            source=str(env["source"]),
            data=env["data"],
            subject=env.get("subject"),
            id=str(env["id"]),
            time=str(env.get("time", "")),
            traceparent=env.get("traceparent"),
        )


def new_event(
    type: str, source: str, data: Mapping[str, Any], subject: str | None = None
) -> CloudEvent:
    """A new event carrying the current trace context as ``traceparent``."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return CloudEvent(
        type=type,
        source=source,
        data=data,
        subject=subject,
        traceparent=carrier.get("traceparent"),
    )


def canonical(envelope: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: every attribute except the signature, canonical JSON."""
    unsigned = {k: v for k, v in envelope.items() if k != SIGNATURE_ATTR}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class EventSigner:
    """Signs and verifies envelopes with versioned HMAC-SHA256 keys.

    Signing uses the newest key version; verification accepts any version still
    held, so the KMS key can rotate without rejecting events in flight.
    """

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not keys:
            raise ValueError("EventSigner needs at least one key version")
        self._keys = dict(keys)
        self._latest = max(self._keys)

    @classmethod
    async def from_transit(cls, transit: TransitKeys, key_name: str) -> EventSigner:
        """Export the HMAC key versions of ``key_name`` from the KMS (created if missing)."""
        await transit.ensure_key(key_name, exportable=True)
        return cls(await transit.export_hmac_keys(key_name))

    def _mac(self, version: int, payload: bytes) -> str:
        digest = hmac.new(self._keys[version], payload, hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def sign(self, envelope: Mapping[str, Any]) -> dict[str, Any]:
        signed = dict(envelope)
        signed[SIGNATURE_ATTR] = f"v{self._latest}:{self._mac(self._latest, canonical(envelope))}"
        return signed

    def verify(self, envelope: Mapping[str, Any]) -> CloudEvent:
        """The event if its signature is valid; raises EventRejected otherwise."""
        signature = envelope.get(SIGNATURE_ATTR)
        if not isinstance(signature, str):
            raise EventRejected("unsigned")
        version_text, _, mac = signature.partition(":")
        try:
            version = int(version_text.removeprefix("v"))
        except ValueError:
            raise EventRejected("bad-signature", "unreadable key version") from None
        if version not in self._keys:
            raise EventRejected("bad-signature", f"unknown key version {version}")
        if not hmac.compare_digest(mac, self._mac(version, canonical(envelope))):
            raise EventRejected("bad-signature", "signature does not match")
        return CloudEvent.from_envelope(envelope)


class TransitKeys(Protocol):
    async def ensure_key(self, name: str, exportable: bool = ...) -> None: ...
    async def export_hmac_keys(self, name: str) -> dict[int, bytes]: ...
