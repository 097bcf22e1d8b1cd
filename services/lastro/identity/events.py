"""Events the identity service publishes (topic ``lastro.identity``, keyed by user id,
through the transactional outbox): security facts the notification service tells
the user about. Ids, a device id and the sign-in's address and user agent; never a
username, password, code or token.

* ``lastro.identity.login_new_device`` ``{user_id, device: {id, user_agent}, ip, at}``:
  a sign-in completed from a device this user had not signed in from (a device is a
  long-lived random cookie; the very first device of a user is not announced).
* ``lastro.identity.totp_enabled`` / ``lastro.identity.totp_disabled``
  ``{user_id, ip, at}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

TOPIC: Final = "lastro.identity"
SOURCE: Final = "/identity"
LOGIN_NEW_DEVICE: Final = "lastro.identity.login_new_device"
TOTP_ENABLED: Final = "lastro.identity.totp_enabled"
TOTP_DISABLED: Final = "lastro.identity.totp_disabled"
MAX_USER_AGENT: Final = 200


@dataclass(frozen=True)
class DeviceSeen:
    """The browser a sign-in comes from: its device cookie and its User-Agent."""

    cookie: str
    user_agent: str


def login_new_device(
    user_id: str, device_id: str, user_agent: str, ip: str | None, at: datetime
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device": {"id": device_id, "user_agent": user_agent[:MAX_USER_AGENT] or "unknown"},
        "ip": ip,
        "at": at.isoformat(),
    }


def totp_changed(user_id: str, ip: str | None, at: datetime) -> dict[str, Any]:
    return {"user_id": user_id, "ip": ip, "at": at.isoformat()}
