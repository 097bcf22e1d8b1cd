"""Data-subject requests across the platform: the export bundle and the erasure
certificate (pure: no I/O; ``accounts/subject_requests.py`` does the fan-out).

Export bundle (``lastro.subject-export/v1``)::

    {"manifest": {"format", "request_id", "customer_id", "user_id", "exported_at",
                  "services": {<service>: {"records": {<data class>: <count>},
                                           "total": <count>, "sha256": <hex>}}},
     "sections": {<service>: {<data class>: [<record>, ...]}},
     "signature": {"algorithm": "hmac-sha256", "key": <KMS key>, "hmac": "vault:vN:..."}}

``sha256`` is over the canonical JSON of the service's section; the HMAC (made by
the KMS's Transit ``hmac`` endpoint, verifiable with its ``verify`` endpoint) is over
the canonical JSON of the bundle without ``signature``. Canonical JSON: keys sorted,
no insignificant whitespace, UTF-8 (RFC 8785 for the values the services return:
strings, integers, booleans, null, arrays and objects).

Erasure certificate: what was erased where, when, by whom and why, per service,
with ``status`` ``complete`` once every service holding personal data confirmed its
erasure and ``partial`` while one has not (retrying is idempotent per service).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from lastro.core.ids import has_prefix

BUNDLE_FORMAT: Final = "lastro.subject-export/v1"
CERTIFICATE_FORMAT: Final = "lastro.erasure-certificate/v1"
HMAC_ALGORITHM: Final = "hmac-sha256"
COMPLETE: Final = "complete"
PARTIAL: Final = "partial"
ERASED: Final = "erased"
FAILED: Final = "failed"
PENDING: Final = "pending"
USER_PREFIX: Final = "usr"


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (keys sorted, compact, UTF-8)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def manifest(
    request_id: str,
    customer_id: str,
    user_id: str | None,
    exported_at: datetime,
    sections: Mapping[str, Mapping[str, list[Any]]],
) -> dict[str, Any]:
    """Per-service record counts and digests of ``sections``."""
    return {
        "format": BUNDLE_FORMAT,
        "request_id": request_id,
        "customer_id": customer_id,
        "user_id": user_id,
        "exported_at": exported_at.isoformat(),
        "services": {
            service: {
                "records": {name: len(items) for name, items in records.items()},
                "total": sum(len(items) for items in records.values()),
                "sha256": digest(records),
            }
            for service, records in sections.items()
        },
    }


def unsigned_bundle(
    request_id: str,
    customer_id: str,
    user_id: str | None,
    exported_at: datetime,
    sections: Mapping[str, Mapping[str, list[Any]]],
) -> dict[str, Any]:
    return {
        "manifest": manifest(request_id, customer_id, user_id, exported_at, sections),
        "sections": {service: dict(records) for service, records in sections.items()},
    }


def signed_content(document: Mapping[str, Any]) -> bytes:
    """What the HMAC covers: the canonical document without its ``signature``."""
    return canonical({k: v for k, v in document.items() if k != "signature"})


def with_signature(document: Mapping[str, Any], key: str, mac: str) -> dict[str, Any]:
    return {**document, "signature": {"algorithm": HMAC_ALGORITHM, "key": key, "hmac": mac}}


def manifest_errors(bundle: Mapping[str, Any]) -> list[str]:
    """Where the sections disagree with the manifest (counts, digests, services);
    empty for a consistent bundle. The HMAC is checked by the KMS, not here."""
    errors: list[str] = []
    listed = bundle["manifest"]["services"]
    sections = bundle["sections"]
    for service in sorted(set(listed) ^ set(sections)):
        errors.append(f"{service}: in only one of manifest and sections")
    for service in sorted(set(listed) & set(sections)):
        records, entry = sections[service], listed[service]
        if digest(records) != entry["sha256"]:
            errors.append(f"{service}: sha256 does not match its section")
        counts = {name: len(items) for name, items in records.items()}
        if counts != entry["records"] or sum(counts.values()) != entry["total"]:
            errors.append(f"{service}: record counts do not match its section")
    return errors


# ---------------------------------------------------------------- the subject


def user_of(owner: str) -> str | None:
    """The identity user behind a customer's ``owner``, or None when the owner is a
    merchant's client (its customers are not its own person)."""
    return owner if has_prefix(owner, USER_PREFIX) else None


def user_to_erase(owner: str, other_live_customers: int) -> str | None:
    """The user whose login, second factors and sessions an erasure of one customer
    also erases: the owning user, unless they still own another live customer (their
    login then still serves that one). Never a merchant's client."""
    user = user_of(owner)
    return None if user is None or other_live_customers > 0 else user


# ---------------------------------------------------------------- erasure


@dataclass(frozen=True)
class ServiceErasure:
    """One service's part of an erasure: ``erased`` counts per data class and when,
    or the last ``error``; ``attempts`` counts the calls made."""

    service: str
    status: str = PENDING
    erased: Mapping[str, int] = field(default_factory=dict)
    erased_at: str | None = None
    error: str | None = None
    attempts: int = 0

    def succeeded(self, erased: Mapping[str, int], erased_at: str) -> ServiceErasure:
        return replace(
            self,
            status=ERASED,
            erased=dict(erased),
            erased_at=erased_at,
            error=None,
            attempts=self.attempts + 1,
        )

    def failed(self, error: str) -> ServiceErasure:
        return replace(self, status=FAILED, error=error, attempts=self.attempts + 1)

    def view(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "erased": dict(self.erased),
            "erased_at": self.erased_at,
            "error": self.error,
            "attempts": self.attempts,
        }


def parse_services(stored: Mapping[str, Mapping[str, Any]]) -> dict[str, ServiceErasure]:
    return {
        name: ServiceErasure(
            name,
            str(entry["status"]),
            dict(entry.get("erased") or {}),
            entry.get("erased_at"),
            entry.get("error"),
            int(entry.get("attempts", 0)),
        )
        for name, entry in stored.items()
    }


def pending(services: Iterable[str]) -> dict[str, ServiceErasure]:
    return {name: ServiceErasure(name) for name in services}


def to_retry(services: Mapping[str, ServiceErasure]) -> list[str]:
    """Services whose erasure is not confirmed yet, in the certificate's order."""
    return [name for name, outcome in services.items() if outcome.status != ERASED]


def status_of(services: Mapping[str, ServiceErasure]) -> str:
    return COMPLETE if services and not to_retry(services) else PARTIAL


@dataclass(frozen=True)
class Certificate:
    """An erasure certificate as stored (``signature`` once signed)."""

    id: str
    customer_id: str
    user_id: str | None
    reason: str
    requested_by: str
    request_id: str | None
    services: Mapping[str, ServiceErasure]
    created_at: datetime
    updated_at: datetime
    signature: Mapping[str, Any] | None = None

    @property
    def status(self) -> str:
        return status_of(self.services)

    def document(self) -> dict[str, Any]:
        """The certificate as shown and signed (``signature`` included when set)."""
        body: dict[str, Any] = {
            "format": CERTIFICATE_FORMAT,
            "id": self.id,
            "object": "erasure_certificate",
            "customer_id": self.customer_id,
            "user_id": self.user_id,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "request_id": self.request_id,
            "status": self.status,
            "services": {name: outcome.view() for name, outcome in self.services.items()},
            "completed_services": sorted(
                name for name, outcome in self.services.items() if outcome.status == ERASED
            ),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
        if self.signature is not None:
            body["signature"] = dict(self.signature)
        return body
