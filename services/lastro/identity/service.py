"""Identity use cases of users: sign-up, password + TOTP login, TOTP enrolment.

Every use case runs in one database transaction (``core.db.in_transaction``) and
records its audit record (and its events: a sign-in from a new device, TOTP enabled
or disabled; :mod:`lastro.identity.events`) with the service's
:class:`~lastro.core.changes.ChangeRecorder` in that same transaction, so an action
and its audit record commit together. Failures that write nothing else are still
audited, in a transaction of their own. Credential checks are guarded by the
failure lockout (``core/ratelimit``): repeated wrong passwords per username, wrong
TOTP codes per user and wrong re-authentication passwords lock out with growing
back-off (429 problem+json). CPU-heavy argon2id work runs in a worker thread. The
OAuth2 protocol itself lives in :mod:`lastro.identity.oauth`, the registration of
its clients in :mod:`lastro.identity.clients`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

import qrcode
from qrcode.image.pil import PilImage

from lastro.core import audit
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Engine, Tx, in_transaction, read
from lastro.core.events import EventSigner
from lastro.core.ids import new_id
from lastro.core.ratelimit import FailureLockout
from lastro.core.security.binding import bind_rows
from lastro.core.security.transit import TransitClient
from lastro.identity import domain, events, store
from lastro.identity.domain import (
    InvalidCode,
    LoginFailed,
    NoPendingEnrolment,
    ReauthenticationFailed,
    SecondFactorLocked,
    TotpAlreadyEnabled,
    TotpNotEnabled,
    UsernameTaken,
)
from lastro.identity.events import DeviceSeen

TOTP_TRANSIT_KEY: Final = "identity-totp"


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


def _utcnow() -> datetime:
    return datetime.now(UTC)


def qr_data_uri(text: str) -> str:
    """A PNG QR code of ``text`` as a ``data:`` URI."""
    buffer = io.BytesIO()
    qrcode.make(text, image_factory=PilImage).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def recorder_for(signer: EventSigner, audit_key: bytes) -> ChangeRecorder:
    """The identity service's change recorder: its outbox and audit chain."""
    return ChangeRecorder(
        source=events.SOURCE,
        outbox=store.outbox,
        audit_tables=store.audit,
        signer=signer,
        audit_key=audit_key,
    )


class IdentityService:
    """The identity use cases over one schema-bound engine."""

    def __init__(
        self,
        engine: Engine,
        transit: TransitClient,
        changes: ChangeRecorder,
        lockout: FailureLockout,
    ) -> None:
        self._engine = engine
        self._transit = transit
        self._changes = changes
        self._lockout = lockout

    async def prepare(self) -> None:
        await self._transit.ensure_key(TOTP_TRANSIT_KEY)

    async def _audit(
        self,
        conn: Tx,
        actor: str,
        action: str,
        outcome: str,
        source_ip: str | None,
        target: str | None = None,
        **details: Any,
    ) -> None:
        await self._changes.audit(
            conn,
            Caller(actor, source_ip),
            action=action,
            target=target or actor,
            details=details,
            outcome=outcome,
        )

    async def _audit_alone(self, *args: Any, **fields: Any) -> None:
        """An audit record for an action that wrote nothing else (a failure)."""
        await in_transaction(self._engine, lambda conn: self._audit(conn, *args, **fields))

    async def _signed_in(
        self, conn: Tx, user_id: str, device: DeviceSeen | None, ip: str | None
    ) -> None:
        """Remember the device of a completed sign-in; announce it when it is new to a
        user who signed in from other devices before (the first one is not news)."""
        if device is None:
            return
        now = _utcnow()
        device_hash = domain.fingerprint(device.cookie)
        if await store.note_device(conn, user_id, device_hash, now) == "new":
            await self._changes.publish(
                conn,
                event_type=events.LOGIN_NEW_DEVICE,
                target=user_id,
                data=events.login_new_device(
                    user_id, f"dev_{device_hash[:20]}", device.user_agent, ip, now
                ),
                topic=events.TOPIC,
                key=user_id,
            )

    async def userinfo(self, user_id: str, scope: str) -> dict[str, Any]:
        """The OpenID Connect UserInfo of ``user_id`` for a token with ``scope``;
        raises UnknownUser."""
        async with self._engine.connect() as conn:
            user = await store.user_by_id(conn, user_id)
        if user is None:
            raise domain.UnknownUser()
        return domain.userinfo_claims(user.id, user.username, scope)

    async def purge_expired(self) -> dict[str, int]:
        """Delete expired codes, login tickets and refresh tokens, and empty token
        families (housekeeping; nothing deleted could still be used)."""
        return await in_transaction(self._engine, lambda conn: store.purge_expired(conn, _utcnow()))

    # ------------------------------------------------------------ users

    async def sign_up(self, username: str, password: str, source_ip: str | None) -> str:
        """Create a user; raises InvalidInput or UsernameTaken. Audited."""
        name = domain.normalize_username(username)
        domain.check_password_policy(password, name)
        password_hash = await asyncio.to_thread(domain.hash_secret, password)
        user_id = new_id("usr")

        async def work(conn: Tx) -> bool:
            if not await store.insert_user(conn, user_id, name, password_hash):
                return False
            await self._audit(conn, user_id, "user.signed_up", audit.SUCCESS, source_ip)
            return True

        if not await in_transaction(self._engine, work):
            raise UsernameTaken()
        return user_id

    async def verify_password(
        self,
        username: str,
        password: str,
        source_ip: str | None,
        device: DeviceSeen | None = None,
    ) -> PasswordVerified:
        """First factor, behind the per-username lockout (429 while locked). Raises
        LoginFailed (audited, counted towards the lockout) on any mismatch, in
        constant-ish time whether or not the user exists. With TOTP enabled, returns
        a single-use ticket (5 minutes) for the second step instead of an
        authentication, once the user's second factor is not locked out."""
        subject = f"pwd:{username.strip().lower()}"
        await self._lockout.ensure_unlocked(subject)
        try:
            verified = await self._check_password(username, password, source_ip, device)
        except LoginFailed:
            await self._lockout.record_failure(subject)
            raise
        await self._lockout.record_success(subject)
        if verified.ticket is not None:
            # TOTP failures count per user across tickets: a known password does not
            # buy unlimited guesses at the second factor.
            await self._lockout.ensure_unlocked(f"otp:{verified.user_id}")
        return verified

    async def _check_password(
        self, username: str, password: str, source_ip: str | None, device: DeviceSeen | None
    ) -> PasswordVerified:
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
                user.id if user else "anonymous",
                "user.authenticated",
                audit.FAILURE,
                source_ip,
                target=user.id if user else "unknown-user",
                factor="pwd",
            )
            raise LoginFailed()
        now = int(time.time())
        if not user.totp_enabled:

            async def signed_in(conn: Tx) -> None:
                await self._audit(
                    conn, user.id, "user.authenticated", audit.SUCCESS, source_ip, amr=["pwd"]
                )
                await self._signed_in(conn, user.id, device, source_ip)

            await in_transaction(self._engine, signed_in)
            return PasswordVerified(user.id, domain.Authentication(user.id, ("pwd",), now), None)
        ticket = domain.new_secret()
        expires = _utcnow() + domain.LOGIN_TICKET_TTL

        async def work(conn: Tx) -> None:
            await store.insert_login_ticket(conn, domain.fingerprint(ticket), user.id, now, expires)

        await in_transaction(self._engine, work)
        return PasswordVerified(user.id, None, ticket)

    async def verify_second_factor(
        self, ticket: str, code: str, source_ip: str | None, device: DeviceSeen | None = None
    ) -> domain.Authentication:
        """Second factor: a TOTP code (once only, ±1 step) or an unused recovery code.

        The ticket is consumed either way, so a wrong code sends the user back to the
        password step. While the user's second factor is locked out no code is
        checked at all, so a ticket opened before a lockout buys no guess during it
        (SecondFactorLocked, or 429 while the lock holds). Raises LoginFailed for a
        bad ticket, InvalidCode for a bad code (counted towards the lockout); all
        audited. ``auth_time`` is the time of this, the last, factor.
        """
        try:
            authentication = await self._check_second_factor(ticket, code, source_ip, device)
        except SecondFactorLocked as locked:
            await self._lockout.ensure_unlocked(f"otp:{locked.user_id}")
            raise
        except InvalidCode as wrong:
            if wrong.user_id is not None:
                await self._lockout.record_failure(f"otp:{wrong.user_id}")
            raise
        await self._lockout.record_success(f"otp:{authentication.user_id}")
        return authentication

    async def _otp_locked(self, user_id: str) -> bool:
        return await self._lockout.is_locked(f"otp:{user_id}") > 0

    async def _check_second_factor(
        self, ticket: str, code: str, source_ip: str | None, device: DeviceSeen | None
    ) -> domain.Authentication:
        outcome: dict[str, Exception] = {}

        async def work(conn: Tx) -> domain.Authentication | None:
            taken = await store.take_login_ticket(conn, domain.fingerprint(ticket), _utcnow())
            if taken is None:
                outcome["error"] = LoginFailed()
                return None
            user = await store.user_by_id(conn, taken[0], for_update=True)
            if user is None or user.totp_secret is None:
                outcome["error"] = LoginFailed()
                return None
            if await self._otp_locked(user.id):
                await self._audit(
                    conn,
                    user.id,
                    "user.authenticated",
                    audit.DENIED,
                    source_ip,
                    factor="otp",
                    reason="locked out",
                )
                outcome["error"] = SecondFactorLocked(user.id)
                return None
            method = await self._spend_second_factor(conn, user, code)
            ok = method is not None
            await self._audit(
                conn,
                user.id,
                "user.authenticated",
                audit.SUCCESS if ok else audit.FAILURE,
                source_ip,
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

    async def _spend_second_factor(self, conn: Tx, user: store.UserRow, code: str) -> str | None:
        """'totp' or 'recovery_code' if ``code`` was accepted (and is now spent), else None."""
        assert user.totp_secret is not None
        if "-" in code:
            code_hash = domain.fingerprint(domain.normalize_recovery_code(code))
            spent = await store.spend_recovery_code(conn, user.id, code_hash)
            return "recovery_code" if spent else None
        secret = await self._open_seed(user, user.totp_secret)
        step = domain.accepted_totp_step(secret, code, time.time(), user.totp_last_step)
        if step is None or not await store.spend_totp_step(conn, user.id, step):
            return None
        return "totp"

    # ------------------------------------------------------------ TOTP seeds

    async def _open_seed(self, user: store.UserRow, ciphertext: str) -> str:
        """A seed ciphertext of ``user``'s row, decrypted: bound to the user id through
        Transit associated data, unless the row predates identity_0003."""
        binding = domain.totp_seed_binding(user.id) if user.totp_bound else None
        plaintext = await self._transit.decrypt(
            TOTP_TRANSIT_KEY, ciphertext, associated_data=binding
        )
        return plaintext.decode()

    async def bind_legacy_secrets(self, batch: int = 100) -> int:
        """Re-encrypt the TOTP seeds written before identity_0003 with the user id as
        Transit associated data; returns how many users were bound. One pass over the
        users by id, ``batch`` at a time (``core.security.binding``: idempotent, safe on
        every replica at once, a row the KMS refuses stays readable)."""

        async def legacy() -> AsyncIterator[store.UnboundSeeds]:
            after = ""
            while page := await read(
                self._engine, partial(store.unbound_totp_seeds, after=after, limit=batch)
            ):
                for row in page:
                    yield row
                after = page[-1].id

        async def reseal(row: store.UnboundSeeds) -> tuple[str | None, str | None]:
            binding = domain.totp_seed_binding(row.id)
            key = TOTP_TRANSIT_KEY
            secret, pending = [
                None if sealed is None else await self._transit.bind(key, sealed, binding)
                for sealed in (row.totp_secret, row.totp_pending_secret)
            ]
            return secret, pending

        async def swap(
            conn: Tx, row: store.UnboundSeeds, sealed: tuple[str | None, str | None]
        ) -> bool:
            return await store.bind_totp_seeds(conn, row, *sealed)

        return await bind_rows(
            self._engine,
            legacy(),
            reseal=reseal,
            swap=swap,
            name=lambda row: f"TOTP seeds of {row.id}",
        )

    # ------------------------------------------------------------ TOTP enrolment

    async def start_totp_enrolment(self, user_id: str, source_ip: str | None) -> TotpEnrolment:
        """A new seed, pending until confirmed (a new call replaces a pending one).
        Raises TotpAlreadyEnabled if TOTP is already enabled. The seed is stored only
        as a Transit ciphertext bound to the user id (associated data)."""
        secret = domain.new_totp_secret()
        ciphertext = await self._transit.encrypt(
            TOTP_TRANSIT_KEY, secret.encode(), associated_data=domain.totp_seed_binding(user_id)
        )

        async def work(conn: Tx) -> str | None:
            user = await store.user_by_id(conn, user_id, for_update=True)
            if user is None or user.totp_enabled:
                return None
            await store.set_pending_totp(conn, user_id, ciphertext)
            await self._audit(conn, user_id, "totp.enrolment_started", audit.SUCCESS, source_ip)
            return user.username

        username = await in_transaction(self._engine, work)
        if username is None:
            raise TotpAlreadyEnabled()
        uri = domain.provisioning_uri(secret, username)
        return TotpEnrolment(secret, uri, qr_data_uri(uri))

    async def _totp_changed(
        self, conn: Tx, user_id: str, source_ip: str | None, enabled: bool
    ) -> None:
        fact = "enabled" if enabled else "disabled"
        await self._changes.record(
            conn,
            Caller(user_id, source_ip),
            action=f"totp.{fact}",
            target=user_id,
            data=events.totp_changed(user_id, source_ip, _utcnow()),
            event_type=events.TOTP_ENABLED if enabled else events.TOTP_DISABLED,
            topic=events.TOPIC,
            key=user_id,
        )

    async def confirm_totp(self, user_id: str, code: str, source_ip: str | None) -> list[str]:
        """Enable TOTP once the user proves they hold the pending seed; returns the
        one-time recovery codes (shown once, stored as hashes). Raises
        NoPendingEnrolment or InvalidCode. Audited, ``lastro.identity.totp_enabled``."""
        codes = domain.new_recovery_codes()

        async def work(conn: Tx) -> None:
            # A refusal writes nothing, so it may simply roll the transaction back.
            user = await store.user_by_id(conn, user_id, for_update=True)
            if user is None or user.totp_pending_secret is None:
                raise NoPendingEnrolment()
            pending = user.totp_pending_secret
            secret = await self._open_seed(user, pending)
            step = domain.accepted_totp_step(secret, code, time.time(), None)
            if step is None:
                raise InvalidCode()
            await store.enable_totp(conn, user_id, pending, step)
            hashes = [domain.fingerprint(domain.normalize_recovery_code(c)) for c in codes]
            await store.replace_recovery_codes(conn, user_id, hashes)
            await self._totp_changed(conn, user_id, source_ip, enabled=True)

        await in_transaction(self._engine, work)
        return codes

    async def disable_totp(self, user_id: str, password: str, source_ip: str | None) -> None:
        """Turn TOTP off after re-authentication with the password; recovery codes are
        deleted. Re-authentication is a password check like login, behind its own
        lockout (a stolen access token must not buy unlimited password guesses):
        ReauthenticationFailed on a wrong password (audited), TotpNotEnabled if not
        enabled. Audited, ``lastro.identity.totp_disabled``."""
        subject = f"reauth:{user_id}"
        await self._lockout.ensure_unlocked(subject)
        try:
            await self._disable_totp(user_id, password, source_ip)
        except ReauthenticationFailed:
            await self._lockout.record_failure(subject)
            raise
        await self._lockout.record_success(subject)

    async def _disable_totp(self, user_id: str, password: str, source_ip: str | None) -> None:
        async with self._engine.connect() as conn:
            user = await store.user_by_id(conn, user_id)
        if user is None:
            raise ReauthenticationFailed()
        if not await asyncio.to_thread(domain.verify_secret, user.password_hash, password):
            await self._audit_alone(
                user_id,
                "totp.disabled",
                audit.FAILURE,
                source_ip,
                reason="re-authentication failed",
            )
            raise ReauthenticationFailed()
        if not user.totp_enabled:
            raise TotpNotEnabled()

        async def work(conn: Tx) -> None:
            await store.disable_totp(conn, user_id)
            await self._totp_changed(conn, user_id, source_ip, enabled=False)

        await in_transaction(self._engine, work)
