"""EventSigner: HMAC-SHA256 over the canonical envelope, versioned keys (no I/O)."""

from __future__ import annotations

import json
import secrets

import pytest

from lastro.core.events import CloudEvent, EventRejected, EventSigner, canonical

OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)


def event(**data: object) -> CloudEvent:
    return CloudEvent(
        type="lastro.account.opened",
        source="/accounts",
        data={"account_id": "acc_1", **data},
        subject="acc_1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


def test_a_signed_envelope_verifies_to_the_same_event() -> None:
    signer = EventSigner({1: OLD})
    original = event(amount=100)
    verified = signer.verify(signer.sign(original.envelope()))
    assert verified == original


def test_the_signature_names_the_newest_key_version() -> None:
    signed = EventSigner({1: OLD, 2: NEW}).sign(event().envelope())
    assert signed["signature"].startswith("v2:")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda env: env["data"].update(account_id="acc_2"),
        lambda env: env.update(type="lastro.account.closed"),
        lambda env: env.update(subject="acc_2"),
        lambda env: env.update(time="2020-01-01T00:00:00+00:00"),
        lambda env: env.pop("traceparent"),
        lambda env: env.update(extra="added"),
    ],
)
def test_any_change_to_a_signed_attribute_is_rejected(tamper: object) -> None:
    signer = EventSigner({1: OLD})
    signed = signer.sign(event().envelope())
    tamper(signed)  # type: ignore[operator]
    with pytest.raises(EventRejected) as rejected:
        signer.verify(signed)
    assert rejected.value.reason == "bad-signature"


def test_an_unsigned_envelope_is_rejected() -> None:
    with pytest.raises(EventRejected) as rejected:
        EventSigner({1: OLD}).verify(event().envelope())
    assert rejected.value.reason == "unsigned"


@pytest.mark.parametrize("signature", ["v9:AAAA", "vX:AAAA", "AAAA", "v1:", 42])
def test_unknown_or_unreadable_signatures_are_rejected(signature: object) -> None:
    envelope = {**event().envelope(), "signature": signature}
    with pytest.raises(EventRejected) as rejected:
        EventSigner({1: OLD}).verify(envelope)
    assert rejected.value.reason in ("bad-signature", "unsigned")


def test_a_signature_by_another_key_is_rejected() -> None:
    forged = EventSigner({1: NEW}).sign(event().envelope())
    with pytest.raises(EventRejected):
        EventSigner({1: OLD}).verify(forged)


def test_events_signed_before_a_rotation_still_verify_and_new_ones_need_the_new_key() -> None:
    before = EventSigner({1: OLD}).sign(event(n=1).envelope())
    rotated = EventSigner({1: OLD, 2: NEW})
    after = rotated.sign(event(n=2).envelope())
    assert rotated.verify(before).data["n"] == 1
    assert rotated.verify(after).data["n"] == 2
    with pytest.raises(EventRejected):
        EventSigner({1: OLD}).verify(after)


def test_serialisation_order_and_whitespace_do_not_matter() -> None:
    signer = EventSigner({1: OLD})
    signed = signer.sign(event(b=2, a=1).envelope())
    reparsed = json.loads(json.dumps(dict(reversed(list(signed.items()))), indent=2))
    assert signer.verify(reparsed).data == {"account_id": "acc_1", "b": 2, "a": 1}


def test_the_canonical_form_excludes_only_the_signature() -> None:
    envelope = event().envelope()
    signed = EventSigner({1: OLD}).sign(envelope)
    assert canonical(signed) == canonical(envelope)
    assert b", " not in canonical(envelope) and b": " not in canonical(envelope)
    assert EventSigner({1: OLD}).sign(signed) == signed


def test_a_signer_needs_a_key() -> None:
    with pytest.raises(ValueError):
        EventSigner({})


def test_a_malformed_but_correctly_signed_envelope_is_rejected_as_malformed() -> None:
    signer = EventSigner({1: OLD})
    envelope = {"specversion": "0.3", "id": "evt_1", "source": "/x", "type": "t", "data": {}}
    with pytest.raises(EventRejected) as rejected:
        signer.verify(signer.sign(envelope))
    assert rejected.value.reason == "malformed"
