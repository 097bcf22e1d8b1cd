"""Webhook endpoints: URLs, the address policy (SSRF), subscriptions, secrets, signing."""

from __future__ import annotations

import base64
import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from lastro.notifications.channels import CheckedResolver, WebhookTargets, sign
from lastro.notifications.domain.errors import (
    InvalidEndpoint,
    InvalidWebhookUrl,
    WebhookTargetRefused,
)
from lastro.notifications.domain.kinds import SUBSCRIBABLE, Kind
from lastro.notifications.domain.webhooks import (
    AddressPolicy,
    EndpointStatus,
    SecretVersion,
    accepts,
    new_secret,
    parse_webhook_url,
    rotation_expiries,
    should_disable,
    subscription,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "https:///no-host",
        "https://user:pass@hooks.example.com/",
        "https://hooks.example.com/#frag",
        "https://hooks.example.com:99999/",
        "https://" + "a" * 2050 + ".com/",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidWebhookUrl):
        parse_webhook_url(url)


def test_url_parts() -> None:
    parsed = parse_webhook_url("https://Hooks.Example.com/lastro?x=1")
    assert (parsed.scheme, parsed.host, parsed.port) == ("https", "hooks.example.com", 443)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104 - a target to refuse, not a bind address
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "192.0.2.10",
    ],
)
def test_private_loopback_link_local_and_hidden_addresses_are_refused(address: str) -> None:
    policy = AddressPolicy()
    assert policy.refusal(ipaddress.ip_address(address)) is not None
    with pytest.raises(WebhookTargetRefused):
        policy.check("target.example", [ipaddress.ip_address(address)])


def test_every_address_of_a_name_must_pass() -> None:
    policy = AddressPolicy()
    public = ipaddress.ip_address("93.184.216.34")
    assert policy.refusal(public) is None
    policy.check("example.com", [public])
    with pytest.raises(WebhookTargetRefused, match=r"10\.0\.0\.7"):
        policy.check("mixed.example", [public, ipaddress.ip_address("10.0.0.7")])
    with pytest.raises(WebhookTargetRefused, match="does not resolve"):
        policy.check("nothing.example", [])


def test_networks_allowed_for_development_pass_and_may_use_plain_http() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.refusal(loopback) is None
    assert policy.allows_plain_http([loopback])
    assert policy.refusal(ipaddress.ip_address("10.0.0.1")) is not None
    assert not policy.allows_plain_http([ipaddress.ip_address("93.184.216.34")])


def test_subscriptions() -> None:
    assert subscription([]) == frozenset()
    assert subscription(["payout.sent"]) == {Kind.PAYOUT_SENT}
    with pytest.raises(InvalidEndpoint):
        subscription(["webhook.test"])
    with pytest.raises(InvalidEndpoint):
        subscription("payout.sent")
    every = frozenset[Kind]()
    assert all(accepts(EndpointStatus.ENABLED, every, k) for k in SUBSCRIBABLE)
    assert not accepts(EndpointStatus.ENABLED, every, Kind.WEBHOOK_TEST)
    assert not accepts(EndpointStatus.DISABLED, every, Kind.PAYOUT_SENT)
    only = frozenset({Kind.PAYOUT_SENT})
    assert accepts(EndpointStatus.ENABLED, only, Kind.PAYOUT_SENT)
    assert not accepts(EndpointStatus.ENABLED, only, Kind.TRANSACTION_SUCCEEDED)


def test_secrets_are_standard_webhooks_secrets() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_secret() != secret


def test_a_rotation_keeps_at_most_two_secrets_active() -> None:
    old = SecretVersion("whs_old", NOW - timedelta(days=30), NOW + timedelta(hours=2))
    current = SecretVersion("whs_cur", NOW - timedelta(days=1), None)
    gone = SecretVersion("whs_gone", NOW - timedelta(days=60), NOW - timedelta(days=29))
    expiries = rotation_expiries([gone, old, current], NOW, timedelta(hours=24))
    assert expiries == {"whs_old": NOW, "whs_cur": NOW + timedelta(hours=24)}
    assert rotation_expiries([current], NOW, timedelta(0)) == {"whs_cur": NOW}
    # a rotation never lengthens the life of a secret already set to end sooner
    ending = SecretVersion("whs_end", NOW - timedelta(days=1), NOW + timedelta(hours=1))
    assert rotation_expiries([ending], NOW, timedelta(days=3)) == {}
    with pytest.raises(InvalidEndpoint):
        rotation_expiries([current], NOW, timedelta(days=8))


def test_both_secrets_of_a_rotation_verify_and_no_other_does() -> None:
    old, new = new_secret(), new_secret()
    body = '{"type":"payout.sent"}'
    at = datetime.now(UTC)
    headers = {
        "webhook-id": "dlv_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": sign("dlv_1", body, [new, old], at),
    }
    assert headers["webhook-signature"].count("v1,") == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"type": "payout.sent"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("payout", "refund"), headers)


def test_a_run_of_failures_disables() -> None:
    assert not should_disable(2, 3)
    assert should_disable(3, 3)


class _Table:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def addresses(self, host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address(a) for a in self.table[host]]


async def test_the_connection_resolver_hands_aiohttp_only_checked_addresses() -> None:
    resolver = _Table({"ok.example": ["93.184.216.34"], "flip.example": ["10.0.0.9"]})
    checked = CheckedResolver(WebhookTargets(resolver, AddressPolicy()))
    (result,) = await checked.resolve("ok.example", 443)
    assert (result["host"], result["port"]) == ("93.184.216.34", 443)
    # the name changed between the check and the connect: the connect gets nothing
    with pytest.raises(OSError, match="refused"):
        await checked.resolve("flip.example", 443)
