"""Merchant webhook endpoints: URLs and where they may point, subscriptions, secrets.

* A webhook URL is ``https://`` with a host name or address and no user info
  (plain ``http://`` only towards networks explicitly allowed for development).
* :class:`AddressPolicy` decides whether an address may be contacted: only public
  (globally routable) unicast addresses, unless the address lies in a network
  explicitly allowed for development. Loopback, private (RFC 1918, ULA), link-local
  (169.254/16, where cloud metadata lives, and fe80::/10), carrier-grade NAT,
  multicast, reserved and unspecified addresses are refused, and so are IPv4
  addresses hidden inside IPv6 (mapped, 6to4, Teredo, NAT64). Every address a name
  resolves to must pass, at registration and again at each delivery (DNS changes).
* Secrets are ``whsec_`` + base64 of 32 random bytes (Standard Webhooks). Rotation
  keeps at most two secrets active: the new one, and the previous one until its
  expiry, so receivers can switch over without dropping a delivery.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from lastro.notifications.domain.errors import (
    InvalidEndpoint,
    InvalidWebhookUrl,
    WebhookTargetRefused,
)
from lastro.notifications.domain.kinds import SUBSCRIBABLE, Kind

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES: Final = 32
MAX_URL_LENGTH: Final = 2048
MAX_ROTATION_OVERLAP: Final = timedelta(days=7)
DEFAULT_ROTATION_OVERLAP: Final = timedelta(hours=24)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


class EndpointStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


@dataclass(frozen=True)
class Endpoint:
    """A merchant's webhook endpoint; ``event_types`` empty means every subscribable
    kind. ``notice_email`` is whether an address for notices is on file (it is stored
    sealed and never shown)."""

    id: str
    owner: str
    url: str
    description: str
    event_types: frozenset[Kind]
    status: EndpointStatus
    consecutive_failures: int
    notice_email: bool
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = None

    def accepts(self, kind: Kind) -> bool:
        """Whether this endpoint gets ``kind`` by subscription."""
        return accepts(self.status, self.event_types, kind)


@dataclass(frozen=True)
class WebhookUrl:
    url: str
    scheme: str
    host: str
    port: int


def parse_webhook_url(url: str) -> WebhookUrl:
    """The parts of a webhook URL; raises InvalidWebhookUrl (field ``url``)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"url must be 1-{MAX_URL_LENGTH} characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidWebhookUrl(f"url is malformed: {error}", field="url") from None
    if parts.scheme not in ("https", "http"):
        raise InvalidWebhookUrl("url must start with https://", field="url")
    if not parts.hostname:
        raise InvalidWebhookUrl("url needs a host", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("url must not carry credentials", field="url")
    if parts.fragment:
        raise InvalidWebhookUrl("url must not have a fragment", field="url")
    default = 443 if parts.scheme == "https" else 80
    return WebhookUrl(url, parts.scheme, parts.hostname.lower(), port or default)


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally (``10.0.0.1``, ``[::1]``), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class AddressPolicy:
    """Which addresses webhooks may reach (see the module docstring)."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(net, strict=False) for net in allowed
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be contacted, or None when it may."""
        if any(address in network for network in self.allowed):
            return None
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = self.refusal(embedded)
            return None if inner is None else f"{address} embeds {embedded}: {inner}"
        for label, flag in (
            ("loopback", address.is_loopback),
            ("link-local", address.is_link_local),
            ("private", address.is_private),
            ("multicast", address.is_multicast),
            ("unspecified", address.is_unspecified),
            ("reserved", address.is_reserved),
        ):
            if flag:
                return f"{address} is a {label} address"
        if not address.is_global:
            return f"{address} is not a public address"
        return None

    def check(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Raise WebhookTargetRefused unless every address of ``host`` may be contacted."""
        if not addresses:
            raise WebhookTargetRefused(f"{host} does not resolve to any address", field="url")
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise WebhookTargetRefused(
                    f"{host} is refused as a webhook target: {reason}", field="url"
                )

    def allows_plain_http(self, addresses: Sequence[IPAddress]) -> bool:
        """Plain HTTP only towards networks explicitly allowed for development."""
        return bool(addresses) and all(
            any(a in network for network in self.allowed) for a in addresses
        )


def subscription(event_types: object) -> frozenset[Kind]:
    """The kinds an endpoint subscribes to (empty: every subscribable kind)."""
    if not isinstance(event_types, list):
        raise InvalidEndpoint("event_types must be a list", field="event_types")
    unknown = sorted(str(t) for t in event_types if t not in SUBSCRIBABLE)
    if unknown:
        raise InvalidEndpoint(f"unknown event types: {', '.join(unknown)}", field="event_types")
    return frozenset(Kind(t) for t in event_types)


def accepts(status: EndpointStatus, subscribed: frozenset[Kind], kind: Kind) -> bool:
    """Whether an endpoint gets ``kind`` by subscription."""
    if status is not EndpointStatus.ENABLED or kind not in SUBSCRIBABLE:
        return False
    return not subscribed or kind in subscribed


def new_secret() -> str:
    """A fresh ``whsec_…`` signing secret (32 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@dataclass(frozen=True)
class SecretVersion:
    id: str
    created_at: datetime
    expires_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


def rotation_expiries(
    current: Sequence[SecretVersion], now: datetime, overlap: timedelta
) -> dict[str, datetime]:
    """New expiries for the active secrets when a new one is added: the newest keeps
    working for ``overlap`` (0 expires it at once), any older one expires now, so at
    most two are ever active. Raises InvalidEndpoint for an overlap out of range."""
    if overlap < timedelta(0) or overlap > MAX_ROTATION_OVERLAP:
        raise InvalidEndpoint(
            "the previous secret may stay valid for 0 to 7 days", field="expire_in_seconds"
        )
    active = sorted((s for s in current if s.active(now)), key=lambda s: s.created_at)
    expiries = {s.id: now for s in active[:-1]}
    if active:
        newest = active[-1]
        until = now + overlap
        if newest.expires_at is None or until < newest.expires_at:
            expiries[newest.id] = until
    return expiries


def should_disable(consecutive_failures: int, threshold: int) -> bool:
    """An endpoint is disabled once ``threshold`` attempts failed in a row."""
    return consecutive_failures >= threshold
