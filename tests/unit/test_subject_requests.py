"""The data-subject bundle and erasure certificate (accounts/domain/subject_requests.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lastro.accounts.domain import subject_requests as sr

AT = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
SECTIONS: dict[str, dict[str, list[Any]]] = {
    "identity": {"identity.users": [{"id": "usr_1", "login_name": "zelia"}]},
    "accounts": {
        "accounts.customers": [{"id": "cus_1", "name": "Zélia", "email": "z@example.com"}],
        "accounts.accounts": [{"id": "acc_1"}, {"id": "acc_2"}],
    },
    "fraud": {"fraud.profiles": [], "fraud.screenings": [{"request": {"ip": "198.51.100.7"}}]},
}


def _bundle() -> dict[str, Any]:
    return sr.unsigned_bundle("dsx_1", "cus_1", "usr_1", AT, SECTIONS)


def _kms_hmac(content: bytes) -> str:
    """What a Transit key would answer (the test's own key; the e2e test uses the KMS)."""
    return "vault:v1:" + hmac.new(b"k" * 32, content, hashlib.sha256).hexdigest()


def test_manifest_counts_records_per_class_and_digests_each_section() -> None:
    manifest = _bundle()["manifest"]
    assert manifest["format"] == sr.BUNDLE_FORMAT
    assert manifest["services"]["accounts"]["records"] == {
        "accounts.customers": 1,
        "accounts.accounts": 2,
    }
    assert manifest["services"]["accounts"]["total"] == 3
    assert manifest["services"]["fraud"]["total"] == 1
    expected = hashlib.sha256(sr.canonical(SECTIONS["identity"])).hexdigest()
    assert manifest["services"]["identity"]["sha256"] == expected


def test_a_consistent_bundle_has_no_manifest_errors() -> None:
    assert sr.manifest_errors(_bundle()) == []


def test_a_record_removed_from_a_section_is_caught_by_digest_and_count() -> None:
    bundle = _bundle()
    bundle["sections"]["accounts"]["accounts.accounts"].pop()
    errors = sr.manifest_errors(bundle)
    assert errors == [
        "accounts: sha256 does not match its section",
        "accounts: record counts do not match its section",
    ]


def test_an_edited_value_is_caught_by_the_digest() -> None:
    bundle = json.loads(json.dumps(_bundle()))
    bundle["sections"]["fraud"]["fraud.screenings"][0]["request"]["ip"] = "203.0.113.1"
    assert sr.manifest_errors(bundle) == ["fraud: sha256 does not match its section"]


def test_a_section_missing_from_the_manifest_is_named() -> None:
    bundle = _bundle()
    bundle["sections"]["notifications"] = {}
    assert sr.manifest_errors(bundle) == ["notifications: in only one of manifest and sections"]


def test_the_signed_content_excludes_the_signature_and_ignores_key_order() -> None:
    bundle = _bundle()
    content = sr.signed_content(bundle)
    signed = sr.with_signature(bundle, "lastro-privacy", _kms_hmac(content))
    assert sr.signed_content(signed) == content
    reordered = json.loads(json.dumps(signed), object_pairs_hook=lambda p: dict(reversed(p)))
    assert sr.signed_content(reordered) == content
    assert signed["signature"] == {
        "algorithm": "hmac-sha256",
        "key": "lastro-privacy",
        "hmac": _kms_hmac(content),
    }


def test_any_change_to_the_manifest_changes_the_signed_content() -> None:
    bundle = _bundle()
    content = sr.signed_content(bundle)
    bundle["manifest"]["user_id"] = "usr_2"
    assert sr.signed_content(bundle) != content


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=10,
    )
)
def test_canonical_json_round_trips_and_is_stable(value: Any) -> None:
    encoded = sr.canonical(value)
    assert sr.canonical(json.loads(encoded)) == encoded


def _certificate(**outcomes: sr.ServiceErasure) -> sr.Certificate:
    return sr.Certificate(
        id="erc_1",
        customer_id="cus_1",
        user_id="usr_1",
        reason="art. 17 request",
        requested_by="cli/operator",
        request_id="req-1",
        services=outcomes,
        created_at=AT,
        updated_at=AT,
    )


def test_a_certificate_is_partial_until_every_service_confirmed() -> None:
    services = sr.pending(["identity", "accounts", "notifications"])
    services["identity"] = services["identity"].succeeded({"identity.login_names": 1}, "t1")
    services["accounts"] = services["accounts"].succeeded({"accounts.customers": 1}, "t2")
    services["notifications"] = services["notifications"].failed("notifications: unreachable")
    certificate = _certificate(**services)
    assert certificate.status == sr.PARTIAL
    assert sr.to_retry(certificate.services) == ["notifications"]
    document = certificate.document()
    assert document["completed_services"] == ["accounts", "identity"]
    assert document["services"]["notifications"] == {
        "status": "failed",
        "erased": {},
        "erased_at": None,
        "error": "notifications: unreachable",
        "attempts": 1,
    }

    services["notifications"] = services["notifications"].succeeded({"x": 2}, "t3")
    complete = _certificate(**services)
    assert complete.status == sr.COMPLETE and sr.to_retry(complete.services) == []
    assert complete.services["notifications"].attempts == 2
    assert complete.services["notifications"].error is None


def test_a_certificate_with_no_services_is_never_complete() -> None:
    assert _certificate().status == sr.PARTIAL


def test_a_stored_certificate_reads_back_to_the_same_signed_content() -> None:
    services = sr.pending(["notifications", "accounts"])
    services["accounts"] = services["accounts"].succeeded({"accounts.customers": 1}, "t")
    certificate = _certificate(**services)
    stored = json.loads(json.dumps({n: o.view() for n, o in sorted(services.items())}))
    loaded = _certificate(**sr.parse_services(stored))
    assert sr.signed_content(loaded.document()) == sr.signed_content(certificate.document())


USER = "usr_01M8NQHAB79F2C4YS5QYR3Y5AX"
CLIENT = "cli_01M8NQHAB79F2C4YS5QYR3Y5AX"


def test_the_owning_user_is_erased_with_their_only_customer() -> None:
    assert sr.user_of(USER) == USER
    assert sr.user_to_erase(USER, other_live_customers=0) == USER


def test_a_user_who_still_owns_another_customer_keeps_their_login() -> None:
    assert sr.user_to_erase(USER, other_live_customers=1) is None


def test_a_merchants_client_is_never_erased_with_its_customers() -> None:
    assert sr.user_of(CLIENT) is None
    assert sr.user_to_erase(CLIENT, other_live_customers=0) is None
    assert sr.user_to_erase("usr_not-an-id", other_live_customers=0) is None
