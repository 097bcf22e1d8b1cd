"""The three ways out: signed webhooks over HTTPS, e-mail over SMTP, SMS through the
gateway. Each sender makes exactly one attempt and reports how it ended
(:class:`~lastro.notifications.domain.delivery.AttemptResult`); retries are the
delivery schedule's business, never the sender's.

Webhooks (Standard Webhooks, signed with the ``standardwebhooks`` package)
    ``webhook-id`` is the delivery id (the same on every attempt), ``webhook-timestamp``
    the attempt's time, ``webhook-signature`` one ``v1,<base64>`` per active secret
    (two during a rotation). Before each attempt the URL's host is resolved and every
    address checked against the :class:`AddressPolicy` (a refused target is never
    contacted); the connection itself goes through a resolver that checks again and
    hands aiohttp only the checked addresses, so DNS cannot swap the target in
    between. No redirects are followed and no proxy from the environment is used.

E-mail
    multipart/alternative (text, then HTML) with ``Message-ID: <delivery id@domain>``
    over SMTP, upgraded with STARTTLS whenever the server offers it (verified against
    the CA bundle); a few connections are kept open and reused
    (:class:`SmtpConnections`); behind a circuit breaker.

SMS
    ``POST /v1/messages`` with ``Idempotency-Key: <delivery id>``, so the gateway
    sends one message however often it is asked; behind a breaker, with in-call
    retries (safe thanks to the key).
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Final, Protocol

import aiohttp
import aiosmtplib
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook

from lastro.core.resilience import CircuitOpen, ResilientCall, TransientError
from lastro.notifications.domain.delivery import AttemptResult, Outcome, Sent
from lastro.notifications.domain.errors import InvalidWebhookUrl, WebhookTargetRefused
from lastro.notifications.domain.templates import Email
from lastro.notifications.domain.webhooks import (
    AddressPolicy,
    IPAddress,
    literal_address,
    parse_webhook_url,
)

USER_AGENT: Final = "Lastro-Webhooks/1.0"
MAX_ERROR: Final = 300


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text[:MAX_ERROR]


# ---------------------------------------------------------------- webhook targets


class Resolver(Protocol):
    async def addresses(self, host: str) -> list[IPAddress]:
        """Every address ``host`` resolves to; raises OSError when it does not."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``)."""

    async def addresses(self, host: str) -> list[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        found = {ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos}
        return sorted(found, key=lambda a: (a.version, int(a)))


class WebhookTargets:
    """Checks webhook URLs against the address policy, resolving their host names."""

    def __init__(self, resolver: Resolver, policy: AddressPolicy) -> None:
        self.resolver = resolver
        self.policy = policy

    async def check(self, url: str) -> list[IPAddress]:
        """The addresses ``url`` may be delivered to; raises InvalidWebhookUrl or
        WebhookTargetRefused (field ``url``) with the reason."""
        parsed = parse_webhook_url(url)
        literal = literal_address(parsed.host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self.resolver.addresses(parsed.host)
            except OSError:
                raise WebhookTargetRefused(f"{parsed.host} does not resolve", field="url") from None
        self.policy.check(parsed.host, addresses)
        if parsed.scheme == "http" and not self.policy.allows_plain_http(addresses):
            raise InvalidWebhookUrl("url must start with https://", field="url")
        return addresses


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver for webhook connections: only checked addresses come out."""

    def __init__(self, targets: WebhookTargets) -> None:
        self._targets = targets

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._targets.resolver.addresses(host)
        for address in addresses:
            reason = self._targets.policy.refusal(address)
            if reason is not None:
                raise OSError(f"refused: {reason}")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""


def sign(delivery_id: str, body: str, secrets: Sequence[str], at: datetime) -> str:
    """The ``webhook-signature`` header: one ``v1,<sig>`` per secret, space separated."""
    return " ".join(Webhook(secret).sign(delivery_id, at, body) for secret in secrets)


class WebhookSender:
    """One signed POST per attempt (see the module docstring)."""

    def __init__(self, targets: WebhookTargets, tls: ssl.SSLContext, timeout: float) -> None:
        self.targets = targets
        self._tls = tls
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._tls,
                resolver=CheckedResolver(self.targets),
                use_dns_cache=False,
                limit=200,
                limit_per_host=20,
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, url: str, delivery_id: str, payload: Mapping[str, object], secrets: Sequence[str]
    ) -> Sent:
        started = time.perf_counter()

        def took() -> int:
            return int((time.perf_counter() - started) * 1000)

        try:
            await self.targets.check(url)
        except (InvalidWebhookUrl, WebhookTargetRefused) as refused:
            return Sent(AttemptResult(Outcome.REFUSED, error=refused.detail[:MAX_ERROR]), took())
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign(delivery_id, body, secrets, now),
        }
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http().post(
                    url, data=body.encode(), headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
        except TimeoutError:
            error = f"no answer within {self._timeout:g}s"
            return Sent(AttemptResult(Outcome.TIMEOUT, error=error), took())
        except (aiohttp.ClientError, OSError) as error:
            return Sent(AttemptResult(Outcome.UNREACHABLE, error=_short(error)), took())
        if 200 <= status < 300:
            return Sent(AttemptResult(Outcome.DELIVERED, status_code=status), took())
        return Sent(
            AttemptResult(Outcome.FAILED, status_code=status, error=f"answered HTTP {status}"),
            took(),
        )


def webhook_tls(extra_ca: str | None) -> ssl.SSLContext:
    """The system's trust store, plus the dev CA in development (local receivers)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra_ca is not None:
        context.load_verify_locations(cafile=extra_ca)
    return context


# ---------------------------------------------------------------- e-mail


class SmtpConnections:
    """Up to ``size`` SMTP connections kept open and reused, one message at a time
    each: a message costs its MAIL/RCPT/DATA round trips, not a TCP connection, an
    EHLO and a STARTTLS handshake.

    A connection that failed, timed out or was cancelled mid-message is closed, never
    reused. A kept connection the server closed meanwhile (servers drop idle clients)
    fails at once with a disconnect: the message is sent again on a fresh connection,
    once. Should the server have taken the message before the connection broke, the
    second copy carries the same ``Message-ID`` (the delivery id), as any retry does.
    Connections idle for ``max_idle`` seconds are closed rather than reused."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        timeout: float,
        *,
        size: int = 4,
        max_idle: float = 30.0,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._timeout = timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._max_idle = max_idle
        self.opened = 0

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            start_tls=None,
            tls_context=self._tls,
            timeout=self._timeout,
        )
        await client.connect()
        self.opened += 1
        return client

    def _kept(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if client.is_connected and now - since < self._max_idle:
                return client
            client.close()
        return None

    async def send(self, message: Message) -> None:
        """Send ``message`` on a kept or a new connection (see the class docstring)."""
        async with self._slots:
            client = self._kept()
            reused = client is not None
            if client is None:
                client = await self._connect()
            try:
                try:
                    await client.send_message(message)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    client.close()
                    client = await self._connect()
                    await client.send_message(message)
            except aiosmtplib.SMTPResponseException:
                self._keep(client)  # the server refused this message; the session is fine
                raise
            except BaseException:
                client.close()
                raise
            self._keep(client)

    def _keep(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.append((client, time.monotonic()))
        else:
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class EmailSender:
    """SMTP with STARTTLS when offered, over kept connections (see the module
    docstring and :class:`SmtpConnections`)."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        mail_from: str,
        timeout: float,
        resilience: ResilientCall | None = None,
        connections: int = 4,
    ) -> None:
        self._from = mail_from
        self._domain = email.utils.parseaddr(mail_from)[1].partition("@")[2] or "lastro.dev"
        self._smtp = SmtpConnections(host, port, tls, timeout, size=connections)
        self._call = resilience or ResilientCall(
            "smtp", timeout=timeout * 2, retries=0, fail_max=5, reset_timeout=30
        )

    @property
    def connections_opened(self) -> int:
        """SMTP connections opened so far (each one a TCP connection, EHLO and STARTTLS)."""
        return self._smtp.opened

    async def close(self) -> None:
        await self._smtp.close()

    def message(self, delivery_id: str, to: str, mail: Email) -> Message:
        """The multipart/alternative message (text, then HTML; UTF-8, base64 bodies,
        the subject an RFC 2047 encoded word when it is not ASCII).

        Built with the stdlib's compat32 MIME classes: a third of the CPU of
        :class:`~email.message.EmailMessage`, whose header registry parses every
        header back. Header values are checked here for what that parser refused
        (line breaks: header injection); a non-ASCII address keeps the modern
        class, which encodes it for SMTPUTF8."""
        if not to.isascii():
            return self._modern(delivery_id, to, mail)
        for value in (to, mail.subject):
            if "\r" in value or "\n" in value:
                raise ValueError("header values may not contain line breaks")
        message = MIMEMultipart("alternative")
        message["From"] = self._from
        message["To"] = to
        subject = mail.subject
        message["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = f"<{delivery_id}@{self._domain}>"
        message["Auto-Submitted"] = "auto-generated"
        message.attach(MIMEText(mail.text, "plain", "utf-8"))
        message.attach(MIMEText(mail.html, "html", "utf-8"))
        return message

    def _modern(self, delivery_id: str, to: str, mail: Email) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = to
        message["Subject"] = mail.subject
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = f"<{delivery_id}@{self._domain}>"
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(mail.text)
        message.add_alternative(mail.html, subtype="html")
        return message

    async def send(self, delivery_id: str, to: str, mail: Email) -> Sent:
        message = self.message(delivery_id, to, mail)
        started = time.perf_counter()

        async def attempt() -> None:
            try:
                await self._smtp.send(message)
            except aiosmtplib.SMTPResponseException as error:
                if 400 <= error.code < 500:
                    raise TransientError(f"SMTP {error.code} {error.message}") from error
                raise

        try:
            await self._call.call(attempt, idempotent=False)
        except TimeoutError as error:
            result = AttemptResult(Outcome.TIMEOUT, error=_short(error))
        except (CircuitOpen, ConnectionError, OSError, TransientError) as error:
            result = AttemptResult(Outcome.UNREACHABLE, error=_short(error))
        except aiosmtplib.SMTPRecipientsRefused as error:
            result = AttemptResult(Outcome.FAILED, error=_short(error), permanent=True)
        except aiosmtplib.SMTPException as error:
            result = AttemptResult(Outcome.FAILED, error=_short(error))
        else:
            result = AttemptResult(Outcome.DELIVERED)
        return Sent(result, int((time.perf_counter() - started) * 1000))


# ---------------------------------------------------------------- SMS


class _GatewayBusy(TransientError):
    """A 5xx, 408 or 429 from the gateway: worth asking again."""

    def __init__(self, status: int) -> None:
        super().__init__(f"gateway answered HTTP {status}")
        self.status = status


class SmsSender:
    """The SMS gateway's ``POST /v1/messages`` (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        tls: ssl.SSLContext,
        timeout: float,
        resilience: ResilientCall | None = None,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/v1/messages"
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._tls = tls
        self._call = resilience or ResilientCall(
            "sms-gateway", timeout=timeout, retries=2, fail_max=5, reset_timeout=30
        )
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls), trust_env=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, delivery_id: str, to: str, body: str) -> Sent:
        started = time.perf_counter()
        headers = {**self._auth, "Idempotency-Key": delivery_id}
        message = {"to": to, "body": body, "reference": delivery_id}

        async def attempt() -> int:
            async with self._http().post(self._url, json=message, headers=headers) as response:
                if response.status >= 500 or response.status in (408, 429):
                    raise _GatewayBusy(response.status)
                return response.status

        try:
            status = await self._call.call(attempt, idempotent=True)
        except TimeoutError as error:
            result = AttemptResult(Outcome.TIMEOUT, error=_short(error))
        except _GatewayBusy as error:
            result = AttemptResult(Outcome.FAILED, status_code=error.status, error=str(error))
        except (CircuitOpen, aiohttp.ClientError, OSError) as error:
            result = AttemptResult(Outcome.UNREACHABLE, error=_short(error))
        else:
            if 200 <= status < 300:
                result = AttemptResult(Outcome.DELIVERED, status_code=status)
            else:
                # The gateway refused the message itself (a malformed number, say):
                # asking again would get the same answer.
                error_text = f"gateway refused the message: HTTP {status}"
                result = AttemptResult(
                    Outcome.FAILED, status_code=status, error=error_text, permanent=True
                )
        return Sent(result, int((time.perf_counter() - started) * 1000))
