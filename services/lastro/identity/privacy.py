"""The identity service's privacy API (``core/privacy.py``, docs/privacy.md).

Identity knows users, not customers: every request names the ``user_id`` that owns
the customer (the orchestrator reads it from the customer's ``owner``); without one
there is nothing here to export or erase.

Data classes this service holds
    ``identity.users``     the login name, when the user signed up, whether TOTP is
                           on (the TOTP seed is a KMS ciphertext; recovery codes and
                           the password are argon2/SHA-256 digests, never exported)
    ``identity.devices``   devices the user signed in from (digests of the device
                           id and user agent) with first and last sight
    ``identity.sessions``  sign-in sessions (refresh-token families): client,
                           scope, start, expiry, revocation

Erasure replaces the login name with ``erased:<user id>``, makes the password
unusable, drops the TOTP seeds, recovery codes, devices, login tickets,
authorization codes, refresh tokens and sessions; the user row and its id stay
(other services' records and the audit log refer to it). Idempotent.

Retention (``purge``): ``identity.sessions`` ``purge`` deletes refresh tokens,
authorization codes and login tickets that expired before the cutoff and sessions
revoked before it or left without tokens. ``identity.audit_records`` ``purge``
deletes the audit records older than the cutoff from the start of the chain and
anchors it there (``core.privacy.purge_audit_records``);
``identity.published_events`` ``purge`` deletes the outbox rows published before the
cutoff (``core.privacy.purge_published_events``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import privacy
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, in_transaction
from lastro.core.privacy import Erased, Erasure, Purge, Purged, Records, Subject
from lastro.identity.store import privacy as queries

SERVICE: Final = "identity"
USERS: Final = "identity.users"
DEVICES: Final = "identity.devices"
SESSIONS: Final = "identity.sessions"
SHARED: Final = privacy.SharedClasses(SERVICE)
PURGEABLE: Final[Mapping[str, frozenset[str]]] = {
    SESSIONS: frozenset({"purge"}),
    **SHARED.actions,
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Privacy:
    """identity's :class:`~lastro.core.privacy.PrivacyPort`."""

    service = SERVICE

    def __init__(
        self,
        engine: AsyncEngine,
        changes: ChangeRecorder,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine = engine
        self._changes = changes
        self._clock = clock

    async def export(self, subject: Subject, caller: Caller) -> Records:
        """The user's account, devices and sessions (empty without ``user_id`` or
        for an id that is not a user, e.g. a merchant's client). Audited."""
        user_id = subject.user_id

        async def work(tx: Tx) -> Records:
            user = None if user_id is None else await queries.user_record(tx, user_id)
            records: Records = {USERS: [], DEVICES: [], SESSIONS: []}
            if user is not None and user_id is not None:
                records = {
                    USERS: [user],
                    DEVICES: await queries.devices_of(tx, user_id),
                    SESSIONS: await queries.sessions_of(tx, user_id),
                }
            await self._changes.audit(
                tx,
                caller,
                action=privacy.EXPORTED,
                target=user_id or subject.customer_id,
                details={
                    "customer_id": subject.customer_id,
                    **{name: len(items) for name, items in records.items()},
                },
                now=self._clock(),
            )
            return records

        return await in_transaction(self._engine, work)

    async def erase(self, erasure: Erasure, caller: Caller) -> Erased:
        """Erase the user's login name, second factors, devices and sessions (module
        docstring) in one transaction with its ``privacy.erased`` audit record.
        Idempotent: a second call reports zeros."""
        user_id = erasure.subject.user_id
        now = self._clock()

        async def work(tx: Tx) -> dict[str, int]:
            counts = {} if user_id is None else await queries.erase_user(tx, user_id)
            await self._changes.audit(
                tx,
                caller,
                action=privacy.ERASED,
                target=user_id or erasure.subject.customer_id,
                details={
                    "customer_id": erasure.subject.customer_id,
                    "privacy_request_id": erasure.request_id,
                    "erased": counts,
                },
                now=now,
            )
            return counts

        return Erased(await in_transaction(self._engine, work), now)

    async def purge(self, purge: Purge, caller: Caller) -> Purged:
        """``identity.sessions``, ``identity.audit_records`` and
        ``identity.published_events``, each ``purge`` (module docstring); audited
        ``privacy.purged`` with the count (a dry run counts, changes nothing)."""
        privacy.check_purge(SERVICE, PURGEABLE, purge)
        shared = await SHARED.purge(self._engine, self._changes, purge, caller, now=self._clock())
        if shared is not None:
            return shared

        async def work(tx: Tx) -> int:
            affected = await queries.purge_sessions(tx, purge.cutoff, dry_run=purge.dry_run)
            await privacy.audit_purged(tx, self._changes, caller, purge, affected, self._clock())
            return affected

        affected = await in_transaction(self._engine, work)
        return Purged(purge.data_class, purge.action, purge.cutoff, affected)
