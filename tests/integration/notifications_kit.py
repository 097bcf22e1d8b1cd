"""The notification service under test, and the world around it.

* :func:`running_notifications` serves the real application in-process over HTTPS on a
  throwaway schema, consuming the real Kafka in a fresh consumer group whose offsets
  start at the current end of each topic (so old events of other runs stay unread),
  with compressed retries; contacts come from a running account service.
* :func:`webhook_receiver` is a merchant's receiver (HTTPS, dev CA, on loopback, which
  the test configuration allows explicitly): it verifies every signature with the
  ``standardwebhooks`` package, answers from a script of statuses and can hold an
  answer until told.
* :func:`sms_gateway` reads what the dev stack's simulated SMS gateway
  (``lastro.external.sms``, started by ``lastro dev up``) received; tests use phone
  numbers of their own, so other runs' messages never match.
* :class:`EventPublisher` publishes signed CloudEvents to the real Kafka through a real
  outbox and :class:`~lastro.core.events.OutboxRelay`.
* :class:`StaticResolver` is the stub resolver: webhook host names resolve from a
  table, never through the network.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from accounts_app import AccountsApi
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from eventkit import start_group_at_end
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemas import unique_schema
from sqlalchemy import MetaData, update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook, WebhookVerificationError

from issuerkit import TestIssuer
from lastro.core.config import Settings
from lastro.core.events import (
    CloudEvent,
    EventSigner,
    OutboxRelay,
    enqueue,
    outbox_table,
)
from lastro.core.problems import PROBLEM_CONTENT_TYPE
from lastro.core.security.tls import client_context, server_context
from lastro.devstack.ca import DevCA
from lastro.devstack.smtp_sink import StoredMail, read_mail
from lastro.notifications import events
from lastro.notifications.app import OPENAPI, Wiring, create_app
from lastro.notifications.domain.webhooks import IPAddress

HERE = Path(__file__).parent
USER_SCOPES = "notifications:read notifications:write"
PRIVACY_SCOPES = "privacy:admin"
COMPRESSED = {
    "retry_base_seconds": 0.05,
    "retry_cap_seconds": 0.4,
    "max_attempts": 4,
    "disable_after_failures": 6,
    "lease_seconds": 5.0,
    "poll_seconds": 0.05,
    "webhook_timeout_seconds": 3.0,
    "channel_timeout_seconds": 5.0,
    "webhook_allow_cidrs": ("127.0.0.0/8",),
}


async def eventually(check: Callable[[], Awaitable[Any]], seconds: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; that value, or AssertionError."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- contract checks

_DOCUMENT: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
_URI = "urn:lastro:notifications-openapi"
_REGISTRY: Registry[Any] = Registry().with_resource(
    _URI, Resource.from_contents(_DOCUMENT, default_specification=DRAFT202012)
)


def _at(pointer: str) -> Any:
    node: Any = _DOCUMENT
    for token in pointer.split("/")[1:]:
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def check_response(method: str, path: str, status: int, body: Any) -> None:
    """Assert ``body`` conforms to the schema openapi.yaml declares for it."""
    pointer = f"/paths/{path.replace('~', '~0').replace('/', '~1')}/{method.lower()}"
    response: dict[str, Any] = _at(pointer)["responses"][str(status)]
    pointer = f"{pointer}/responses/{status}"
    while "$ref" in response:
        pointer = response["$ref"].removeprefix("#")
        response = _at(pointer)
    if "content" not in response:
        return
    (media,) = response["content"]
    schema_ptr = f"{pointer}/content/{media.replace('/', '~1')}/schema"
    validator = Draft202012Validator(
        {"$ref": f"{_URI}#{schema_ptr}"},
        registry=_REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"{method} {path} {status} breaks its schema: {errors}"


# ---------------------------------------------------------------- stub resolver


class StaticResolver:
    """Host names resolve from this table only; anything else does not resolve."""

    def __init__(self, table: Mapping[str, list[str]] | None = None) -> None:
        self.table: dict[str, list[str]] = dict(table or {})
        self.asked: list[str] = []

    async def addresses(self, host: str) -> list[IPAddress]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"{host}: name not known to the stub resolver")
        return [ipaddress.ip_address(a) for a in self.table[host]]


# ---------------------------------------------------------------- webhook receiver


@dataclass
class ReceivedWebhook:
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    verified_with: list[int]
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


@dataclass
class Receiver:
    """A merchant's receiver. ``script`` holds the statuses of the next answers (then
    ``default``); ``secrets`` verify signatures (the index of each secret that
    verified is recorded); ``hold`` pauses answers until set."""

    url: str = ""
    secrets: list[str] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    default: int = 200
    hold: asyncio.Event | None = None
    received: list[ReceivedWebhook] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def verify(self, body: bytes, headers: Mapping[str, str]) -> list[int]:
        ok = []
        for index, secret in enumerate(self.secrets):
            try:
                Webhook(secret).verify(body, dict(headers))
            except WebhookVerificationError:
                continue
            ok.append(index)
        return ok

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.script.pop(0) if self.script else self.default
        self.received.append(
            ReceivedWebhook(
                request.headers.get("webhook-id", ""),
                request.headers.get("webhook-timestamp", ""),
                request.headers.get("webhook-signature", ""),
                body,
                self.verify(body, request.headers),
                status,
            )
        )
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def ids(self) -> set[str]:
        return {r.webhook_id for r in self.received}

    def successes(self) -> list[ReceivedWebhook]:
        return [r for r in self.received if 200 <= r.answered < 300]


@asynccontextmanager
async def webhook_receiver(settings: Settings) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/lastro", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    cert = DevCA(settings.dev_dir / "ca").issue("webhook-receiver")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert.cert, cert.key))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"https://127.0.0.1:{port}/hooks/lastro"
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        await runner.cleanup()


# ---------------------------------------------------------------- the SMS gateway


@dataclass
class SmsGateway:
    base: str
    http: aiohttp.ClientSession

    async def messages(self, **query: str) -> list[dict[str, Any]]:
        """What the gateway received (newest first), filtered by ``to``/``reference``."""
        async with self.http.get(f"{self.base}/v1/messages", params=query) as response:
            assert response.status == 200, await response.text()
            return list((await response.json())["messages"])


@asynccontextmanager
async def sms_gateway(settings: Settings) -> AsyncIterator[SmsGateway]:
    """The dev stack's simulated SMS gateway, with the stack's API key."""
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    headers = {"Authorization": f"Bearer {settings.partner_api_keys['sms']}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        gateway = SmsGateway(settings.service_url("sms"), http)
        try:
            await gateway.messages(limit="1")
        except aiohttp.ClientError as error:
            raise AssertionError(
                f"the SMS gateway is not running (`lastro dev up`): {error}"
            ) from error
        yield gateway


def phone_number() -> str:
    """A Brazilian mobile number no other test run uses."""
    return f"+5511{random.randrange(10**8, 10**9)}"


# ---------------------------------------------------------------- events


class EventPublisher:
    """Signed CloudEvents to the real Kafka through an outbox and the relay."""

    def __init__(self, engine: AsyncEngine, signer: EventSigner, relay: OutboxRelay, outbox: Any):
        self._engine = engine
        self._signer = signer
        self._relay = relay
        self._outbox = outbox

    async def publish(self, event: CloudEvent, *, topic: str, key: str) -> CloudEvent:
        async with self._engine.begin() as conn:
            await enqueue(conn, self._outbox, self._signer, event, topic=topic, key=key)
        await self._drain()
        return event

    async def republish(self, event: CloudEvent) -> None:
        """Send the same signed envelope again, as a relay that crashed after Kafka
        acknowledged but before it marked the row would."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(self._outbox)
                .where(self._outbox.c.event_id == event.id)
                .values(published_at=None)
            )
        await self._drain()

    async def _drain(self) -> None:
        while await self._relay.publish_batch():
            pass


@asynccontextmanager
async def event_publisher(
    settings: Settings, engine: AsyncEngine, signer: EventSigner
) -> AsyncIterator[EventPublisher]:
    schema = unique_schema("publisher")
    metadata = MetaData(schema=schema)
    outbox = outbox_table(metadata)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        await conn.run_sync(metadata.create_all)
    relay = OutboxRelay(engine, outbox, settings.kafka_bootstrap)
    await relay.start()
    try:
        yield EventPublisher(engine, signer, relay, outbox)
    finally:
        await relay.stop()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


# ---------------------------------------------------------------- the service


@dataclass
class NotificationsApi:
    client: TestClient[web.Request, web.Application]
    issuer: TestIssuer
    app: web.Application
    schema: str
    settings: Settings
    resolver: StaticResolver

    def bearer(self, subject: str, scope: str = USER_SCOPES) -> dict[str, str]:
        token = self.issuer.mint(scope=scope, subject=subject, client_id="cli_merchant_app")
        return {"Authorization": f"Bearer {token}"}

    def privacy(self) -> dict[str, str]:
        token = self.issuer.mint(
            scope=PRIVACY_SCOPES, subject="svc_compliance", client_id="svc_compliance"
        )
        return {"Authorization": f"Bearer {token}"}

    async def call(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        expect: int,
        template: str | None = None,
        **kwargs: Any,
    ) -> Any:
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            text = await response.text()
            assert response.status == expect, f"{method} {path}: {response.status} {text}"
            if response.status >= 400:
                assert response.content_type == PROBLEM_CONTENT_TYPE, text
            body = json.loads(text) if text else None
        if template is not None:
            check_response(method, template, expect, body)
        return body

    async def delivery(self, owner: str, delivery_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.call(
            "GET",
            f"/v1/deliveries/{delivery_id}",
            self.bearer(owner),
            expect=200,
            template="/v1/deliveries/{id}",
        )
        return body

    async def deliveries(self, owner: str, **query: str) -> list[dict[str, Any]]:
        body = await self.call(
            "GET",
            "/v1/deliveries",
            self.bearer(owner),
            expect=200,
            template="/v1/deliveries",
            params={"limit": "200", **query},
        )
        return list(body["data"])

    async def register(self, owner: str, url: str, **fields: Any) -> tuple[dict[str, Any], str]:
        body = await self.call(
            "POST",
            "/v1/webhook-endpoints",
            self.bearer(owner),
            expect=201,
            template="/v1/webhook-endpoints",
            json={"url": url, **fields},
        )
        return body, body["secret"]


def compressed_settings(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with the compressed delivery knobs and ``changes`` applied."""
    ports = dict(settings.service_ports)
    if "accounts_port" in changes:
        ports["accounts"] = changes.pop("accounts_port")
    notifications = dataclasses.replace(settings.notifications, **{**COMPRESSED, **changes})
    return dataclasses.replace(settings, service_ports=ports, notifications=notifications)


@asynccontextmanager
async def running_notifications(
    settings: Settings,
    engine: AsyncEngine,
    prefix: str,
    *,
    accounts: AccountsApi | None = None,
    resolver: StaticResolver | None = None,
    **changes: Any,
) -> AsyncIterator[NotificationsApi]:
    """The notification service on a fresh schema and consumer group over HTTPS."""
    schema = unique_schema(prefix)
    group = f"notifications-test-{schema}"
    if accounts is not None:
        assert accounts.client.server.port is not None
        changes["accounts_port"] = accounts.client.server.port
    configured = compressed_settings(settings, **changes)
    issuer = TestIssuer(issuer="https://identity.test", audience="notifications")
    resolver = resolver or StaticResolver()

    async def contact_token() -> dict[str, str]:
        assert accounts is not None, "this test runs without an account service"
        token = accounts.issuer.mint(
            scope="customers:contact", subject="svc_notifications", client_id="svc_notifications"
        )
        return {"Authorization": f"Bearer {token}"}

    await start_group_at_end(configured, group, events.CONSUMED_TOPICS)
    app = await create_app(
        configured,
        Wiring(
            schema=schema,
            verifier=issuer.verifier(),
            contacts_auth=contact_token,
            resolver=resolver,
            consumer_group=group,
        ),
    )
    cert = DevCA(settings.dev_dir / "ca").issue("notifications-tests")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_context(cert.cert, cert.key))
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    client: TestClient[web.Request, web.Application] = TestClient(server, connector=connector)
    try:
        await client.start_server()
        yield NotificationsApi(client, issuer, app, schema, configured, resolver)
    finally:
        await client.close()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def mail_to(settings: Settings, address: str) -> list[StoredMail]:
    return read_mail(settings.dev_dir / "mail", to=address)
