"""What the identity service publishes: event types, the topic and payloads.

Signed CloudEvents written to the outbox in the transaction of the change
(``core/changes.py``), keyed by user id. Payloads carry ids only. The service
consumes nothing. Audit-only facts (sign-up, logins, token issuance, refresh-token
reuse, client creation, key rotation) go to the audit log alone, with actions
``<resource>.<past participle>`` and outcomes ``success | failure | denied``.
"""

from __future__ import annotations

from typing import Any, Final

SOURCE: Final = "/identity"
TOPIC: Final = "lastro.identity"

TOTP_ENABLED: Final = "lastro.identity.totp_enabled"
TOTP_DISABLED: Final = "lastro.identity.totp_disabled"


def user_changed(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id}
