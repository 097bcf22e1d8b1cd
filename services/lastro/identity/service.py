"""Identity use cases: sign-up, password + TOTP login, TOTP enrolment, clients.

Every use case runs in one database transaction (``core.db.in_transaction``) and
writes its audit record in that same transaction, so an action and its audit
record commit together; so do the events of :mod:`lastro.identity.events` (a
sign-in from a new device, 2FA enabled or disabled), written to the outbox.
CPU-heavy argon2id work runs in a worker thread. The OAuth2 protocol itself lives
in :mod:`lastro.identity.oauth`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import qrcode
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.db import in_transaction
from lastro.core.events import EventSigner, enqueue, new_event
from lastro.core.ids import new_id
from lastro.core.security.transit import TransitClient
from lastro.identity import domain, events, store
from lastro.identity.events import DeviceSeen

TOTP_TRANSIT_KEY = "identity-totp"
BOOTSTRAP_CLIENT_NAME = "lastro-bootstrap-admin"


class UsernameTaken(Exception):
    """Sign-up with a username that already exists."""


class LoginFailed(Exception):
    """Wrong credentials, unknown user, or an unusable login ticket (never says which)."""


class InvalidCode(Exception):
    """A TOTP or recovery code that is wrong, expired or already used."""

    def __init__(self, user_id: str | None = None) -> None:
        super().__init__("invalid code")
        self.user_id = user_id


class SecondFactorLocked(Exception):
    """The user's second factor is locked out: the ticket was spent, no code was checked."""

    def __init__(self, user_id: str) -> None:
        super().__init__("second factor locked")
        self.user_id = user_id


class EnrolmentConflict(Exception):
    """TOTP is already enabled, or there is no pending enrolment to confirm."""


@dataclass(frozen=True)
class PasswordVerified:
    """First factor passed. ``authentication`` is set when no second factor is needed;
    otherwise ``ticket`` continues the login at the TOTP step."""

    user_id: str
    authentication: domain.Authentication | None
    ticket: str | None


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    provisioning_uri: str
    qr_png_data_uri: str


@dataclass(frozen=True)
class NewClient:
    client_id: str
    client_secret: str | None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def qr_data_uri(text: str) -> str:
    """A PNG QR code of ``text`` as a ``data:`` URI."""
    buffer = io.BytesIO()
    qrcode.make(text).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class IdentityService:
    def __init__(
        self,
        engine: AsyncEngine,
        transit: TransitClient,
        audit_key: bytes,
        signer: EventSigner,
    ) -> None:
        self._engine = engine
        self._transit = transit
        self._audit_key = audit_key
        self._signer = signer

    async def prepare(self) -> None:
        await self._transit.ensure_key(TOTP_TRANSIT_KEY)

    async def _audit(self, conn: AsyncConnection, **fields: Any) -> None:
        await store.write_audit(conn, self._audit_key, **fields)

    async def _publish(
        self, conn: AsyncConnection, event_type: str, user_id: str, data: dict[str, Any]
    ) -> None:
        """The event goes into the outbox in ``conn``'s transaction (with the change)."""
        event = new_event(event_type, events.SOURCE, data, subject=user_id)
        await enqueue(conn, store.outbox, self._signer, event, topic=events.TOPIC, key=user_id)

    async def _signed_in(
        self, conn: AsyncConnection, user_id: str, device: DeviceSeen | None, ip: str | None
    ) -> None:
        """Remember the device of a completed sign-in; announce it when it is new to a
        user who signed in from other devices before (the first one is not news)."""
        if device is None:
            return
        now = _utcnow()
        device_hash = domain.fingerprint(device.cookie)
        if await store.note_device(conn, user_id, device_hash, now) == "new":
            data = events.login_new_device(
                user_id, f"dev_{device_hash[:20]}", device.user_agent, ip, now
            )
            await self._publish(conn, events.LOGIN_NEW_DEVICE, user_id, data)

    async def purge_expired(self) -> dict[str, int]:
        """Delete expired codes, login tickets and refresh tokens, and empty token
        families (housekeeping; nothing deleted could still be used)."""

        async def work(conn: AsyncConnection) -> dict[str, int]:
            return await store.purge_expired(conn, datetime.now(UTC))

        return await in_transaction(self._engine, work)

    async def _audit_alone(self, **fields: Any) -> None:
        """An audit record for an action that wrote nothing else (a failure)."""

        async def work(conn: AsyncConnection) -> None:
            await self._audit(conn, **fields)

        await in_transaction(self._engine, work)

    # ------------------------------------------------------------ users

    async def sign_up(self, username: str, password: str, source_ip: str | None) -> str:
        """Create a user; raises InvalidInput or UsernameTaken. Audited."""
        name = domain.normalize_username(username)
        domain.check_password_policy(password, name)
        password_hash = await asyncio.to_thread(domain.hash_secret, password)
        user_id = new_id("usr")

        async def work(conn: AsyncConnection) -> bool:
            if not await store.insert_user(conn, user_id, name, password_hash):
                return False
            await self._audit(
                conn,
                actor=user_id,
                action="user.signed_up",
                target=user_id,
                outcome="success",
                source_ip=source_ip,
            )
            return True

        if not await in_transaction(self._engine, work):
            raise UsernameTaken(name)
        return user_id

    async def verify_password(
        self,
        username: str,
        password: str,
        source_ip: str | None,
        device: DeviceSeen | None = None,
    ) -> PasswordVerified:
        """First factor. Raises LoginFailed (audited) on any mismatch, in constant-ish time
        whether or not the user exists. With TOTP enabled, returns a single-use ticket
        (5 minutes) for the second step instead of an authentication."""
        try:
            name = domain.normalize_username(username)
        except domain.InvalidInput:
            name = ""
        async with self._engine.connect() as conn:
            user = await store.user_by_username(conn, name) if name else None
        hashed = user.password_hash if user is not None else domain.DUMMY_HASH
        matches = await asyncio.to_thread(domain.verify_secret, hashed, password)
        if user is None or not matches:
            await self._audit_alone(
                actor=user.id if user else "anonymous",
                action="user.login",
                target=user.id if user else "unknown-user",
                outcome="failure",
                source_ip=source_ip,
                factor="pwd",
            )
            raise LoginFailed
        now = int(time.time())
        if not user.totp_enabled:

            async def signed_in(conn: AsyncConnection) -> None:
                await self._audit(
                    conn,
                    actor=user.id,
                    action="user.login",
                    target=user.id,
                    outcome="success",
                    source_ip=source_ip,
                    amr=["pwd"],
                )
                await self._signed_in(conn, user.id, device, source_ip)

            await in_transaction(self._engine, signed_in)
            return PasswordVerified(user.id, domain.Authentication(user.id, ("pwd",), now), None)
        ticket = domain.new_secret()
        expires = _utcnow() + domain.LOGIN_TICKET_TTL

        async def work(conn: AsyncConnection) -> None:
            await store.insert_login_ticket(conn, domain.fingerprint(ticket), user.id, now, expires)

        await in_transaction(self._engine, work)
        return PasswordVerified(user.id, None, ticket)

    async def verify_second_factor(
        self,
        ticket: str,
        code: str,
        source_ip: str | None,
        is_locked: Callable[[str], Awaitable[bool]],
        device: DeviceSeen | None = None,
    ) -> domain.Authentication:
        """Second factor: a TOTP code (once only, ±1 step) or an unused recovery code.

        The ticket is consumed either way, so a wrong code sends the user back to the
        password step. While ``is_locked(user_id)``, no code is checked at all, so a
        ticket opened before a lockout buys no guess during it (SecondFactorLocked).
        Raises LoginFailed for a bad ticket, InvalidCode for a bad code (all audited).
        ``auth_time`` is the time of this, the last, factor.
        """
        outcome: dict[str, Any] = {}

        async def work(conn: AsyncConnection) -> domain.Authentication | None:
            taken = await store.take_login_ticket(conn, domain.fingerprint(ticket), _utcnow())
            if taken is None:
                outcome["error"] = LoginFailed()
                return None
            user = await store.user_by_id(conn, taken[0], for_update=True)
            if user is None or user.totp_secret is None:
                outcome["error"] = LoginFailed()
                return None
            if await is_locked(user.id):
                await self._audit(
                    conn,
                    actor=user.id,
                    action="user.login",
                    target=user.id,
                    outcome="failure",
                    source_ip=source_ip,
                    factor="otp",
                    reason="locked out",
                )
                outcome["error"] = SecondFactorLocked(user.id)
                return None
            method = await self._spend_second_factor(conn, user, code)
            ok = method is not None
            await self._audit(
                conn,
                actor=user.id,
                action="user.login",
                target=user.id,
                outcome="success" if ok else "failure",
                source_ip=source_ip,
                factor=method or "otp",
                amr=["pwd", "otp"] if ok else ["pwd"],
            )
            if not ok:
                outcome["error"] = InvalidCode(user.id)
                return None
            await self._signed_in(conn, user.id, device, source_ip)
            return domain.Authentication(user.id, ("pwd", "otp"), int(time.time()))

        authentication = await in_transaction(self._engine, work)
        if authentication is None:
            raise outcome["error"]
        return authentication

    async def _spend_second_factor(
        self, conn: AsyncConnection, user: store.UserRow, code: str
    ) -> str | None:
        """'totp' or 'recovery_code' if ``code`` was accepted (and is now spent), else None."""
        assert user.totp_secret is not None
        if "-" in code:
            code_hash = domain.fingerprint(domain.normalize_recovery_code(code))
            spent = await store.spend_recovery_code(conn, user.id, code_hash)
            return "recovery_code" if spent else None
        secret = (await self._transit.decrypt(TOTP_TRANSIT_KEY, user.totp_secret)).decode()
        step = domain.accepted_totp_step(secret, code, time.time(), user.totp_last_step)
        if step is None or not await store.spend_totp_step(conn, user.id, step):
            return None
        return "totp"

    # ------------------------------------------------------------ TOTP enrolment

    async def start_totp_enrolment(self, user_id: str, source_ip: str | None) -> TotpEnrolment:
        """A new seed, pending until confirmed (a new call replaces a pending one).
        Raises EnrolmentConflict if TOTP is already enabled. The seed is stored only
        as a Transit ciphertext."""
        secret = domain.new_totp_secret()
        ciphertext = await self._transit.encrypt(TOTP_TRANSIT_KEY, secret.encode())

        async def work(conn: AsyncConnection) -> str | None:
            user = await store.user_by_id(conn, user_id, for_update=True)
            if user is None or user.totp_enabled:
                return None
            await store.set_pending_totp(conn, user_id, ciphertext)
            await self._audit(
                conn,
                actor=user_id,
                action="totp.enrolment_started",
                target=user_id,
                outcome="success",
                source_ip=source_ip,
            )
            return user.username

        username = await in_transaction(self._engine, work)
        if username is None:
            raise EnrolmentConflict("two-factor authentication is already enabled")
        uri = domain.provisioning_uri(secret, username)
        return TotpEnrolment(secret, uri, qr_data_uri(uri))

    async def confirm_totp(self, user_id: str, code: str, source_ip: str | None) -> list[str]:
        """Enable TOTP once the user proves they hold the pending seed; returns the
        one-time recovery codes (shown once, stored as hashes). Raises
        EnrolmentConflict (nothing pending) or InvalidCode. Audited."""
        codes = domain.new_recovery_codes()

        async def work(conn: AsyncConnection) -> None:
            # A refusal writes nothing, so it may simply roll the transaction back.
            user = await store.user_by_id(conn, user_id, for_update=True)
            if user is None or user.totp_pending_secret is None:
                raise EnrolmentConflict("no pending two-factor enrolment")
            pending = user.totp_pending_secret
            secret = (await self._transit.decrypt(TOTP_TRANSIT_KEY, pending)).decode()
            step = domain.accepted_totp_step(secret, code, time.time(), None)
            if step is None:
                raise InvalidCode()
            await store.enable_totp(conn, user_id, pending, step)
            hashes = [domain.fingerprint(domain.normalize_recovery_code(c)) for c in codes]
            await store.replace_recovery_codes(conn, user_id, hashes)
            await self._audit(
                conn,
                actor=user_id,
                action="totp.enabled",
                target=user_id,
                outcome="success",
                source_ip=source_ip,
            )
            data = events.totp_changed(user_id, source_ip, _utcnow())
            await self._publish(conn, events.TOTP_ENABLED, user_id, data)

        await in_transaction(self._engine, work)
        return codes

    async def disable_totp(self, user_id: str, password: str, source_ip: str | None) -> None:
        """Turn TOTP off after re-authentication with the password; recovery codes are
        deleted. Raises LoginFailed on a wrong password, EnrolmentConflict if not enabled.
        Audited either way."""
        async with self._engine.connect() as conn:
            user = await store.user_by_id(conn, user_id)
        if user is None:
            raise LoginFailed
        if not await asyncio.to_thread(domain.verify_secret, user.password_hash, password):
            await self._audit_alone(
                actor=user_id,
                action="totp.disabled",
                target=user_id,
                outcome="failure",
                source_ip=source_ip,
                reason="re-authentication failed",
            )
            raise LoginFailed
        if not user.totp_enabled:
            raise EnrolmentConflict("two-factor authentication is not enabled")

        async def work(conn: AsyncConnection) -> None:
            await store.disable_totp(conn, user_id)
            await self._audit(
                conn,
                actor=user_id,
                action="totp.disabled",
                target=user_id,
                outcome="success",
                source_ip=source_ip,
            )
            data = events.totp_changed(user_id, source_ip, _utcnow())
            await self._publish(conn, events.TOTP_DISABLED, user_id, data)

        await in_transaction(self._engine, work)

    # ------------------------------------------------------------ clients

    async def create_client(
        self,
        *,
        name: str,
        policy: domain.ClientPolicy,
        confidential: bool,
        actor: str,
        source_ip: str | None,
    ) -> NewClient:
        """Register a client; the secret (confidential clients) is returned once and
        stored as an argon2id hash. Raises InvalidInput. Audited."""
        domain.check_client_policy(policy)
        if not confidential and "client_credentials" in policy.grant_types:
            raise domain.InvalidInput(
                "grant_types", "client_credentials needs a confidential client"
            )
        client_id = new_id("cli")
        secret = domain.new_secret() if confidential else None
        secret_hash = await asyncio.to_thread(domain.hash_secret, secret) if secret else None
        row = store.ClientRow(
            id=client_id,
            name=name,
            secret_hash=secret_hash,
            grant_types=tuple(sorted(policy.grant_types)),
            scopes=tuple(sorted(policy.scopes)),
            audiences=tuple(sorted(policy.audiences)),
            redirect_uris=policy.redirect_uris,
        )

        async def work(conn: AsyncConnection) -> None:
            await store.insert_client(conn, row)
            await self._audit(
                conn,
                actor=actor,
                action="client.created",
                target=client_id,
                outcome="success",
                source_ip=source_ip,
                grant_types=list(row.grant_types),
                scopes=list(row.scopes),
                audiences=list(row.audiences),
            )

        await in_transaction(self._engine, work)
        return NewClient(client_id, secret)

    async def bootstrap_admin_client(self, secret_file: Path) -> str | None:
        """Create the dev stack's admin client unless one exists, writing
        ``client_id:client_secret`` to ``secret_file`` (mode 0600). Returns the new
        client id, or None when it already existed."""
        async with self._engine.connect() as conn:
            existing = await store.client_named(conn, BOOTSTRAP_CLIENT_NAME)
        if existing is not None and await asyncio.to_thread(secret_file.exists):
            return None
        policy = domain.ClientPolicy(
            grant_types=frozenset({"client_credentials"}),
            scopes=frozenset({domain.ADMIN_SCOPE}),
            audiences=frozenset({"identity"}),
        )
        created = await self.create_client(
            name=BOOTSTRAP_CLIENT_NAME,
            policy=policy,
            confidential=True,
            actor="system:bootstrap",
            source_ip=None,
        )
        assert created.client_secret is not None
        text = f"{created.client_id}:{created.client_secret}\n"
        await asyncio.to_thread(_write_private, secret_file, text)
        return created.client_id


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
