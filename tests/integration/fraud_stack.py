"""The fraud service and analyser served in-process for integration tests.

Everything is real: PostgreSQL (a throwaway schema per test module), Redis (a
fresh key prefix), Kafka (the real ``lastro.fraud.rules`` and
``lastro.transactions`` topics), the KMS, and the identity and account services of
the running stack (`lastro dev up`): tokens are client_credentials tokens the
identity service issues to clients registered through its admin API, and the
apps verify them against its JWKS. The fraud app reports review outcomes to a
stand-in of the transaction service run as its own process
(``transactions_stand_in.py``), the analyser freezes accounts at the real account
service. Transaction events are published signed, through a real producer.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer
from eventkit import start_group_at_end
from identity_flows import serve_https
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import CloudEvent, EventSigner, new_event
from lastro.core.problems import PROBLEM_CONTENT_TYPE
from lastro.core.security.tls import client_context
from lastro.devstack.components import Service
from lastro.fraud import analyser
from lastro.fraud.app import Wiring, create_app
from lastro.fraud.events import RULE_UPSERTED, RULES_TOPIC, SOURCE, TRANSACTIONS_TOPIC

HERE = Path(__file__).parent
T = TypeVar("T")


def require_services(settings: Settings, *names: str) -> None:
    """Fail clearly when a service of the stack these tests talk to is down."""
    down = [name for name in names if not Service(settings, name).healthy()]
    assert not down, f"stack services down ({', '.join(down)}): run `lastro dev up`"


async def eventually(check: Callable[[], Awaitable[T | None]], seconds: float = 20.0) -> T:
    """The first truthy result of ``check()``, polled until ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"condition not met within {seconds}s"
        await asyncio.sleep(0.1)


@dataclass
class StackIdentity:
    """The running identity service: register clients, get their tokens."""

    base: str
    http: aiohttp.ClientSession
    admin_token: str

    @classmethod
    async def connect(cls, settings: Settings, http: aiohttp.ClientSession) -> StackIdentity:
        base = settings.service_url("identity")
        secret_file = settings.dev_dir / "secrets" / "identity_admin_secret"
        admin_id, _, admin_secret = secret_file.read_text().strip().partition(":")
        token = await cls._token(http, base, admin_id, admin_secret, "identity:admin", "identity")
        return cls(base, http, token)

    @staticmethod
    async def _token(
        http: aiohttp.ClientSession, base: str, cid: str, secret: str, scope: str, audience: str
    ) -> str:
        async with http.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", "scope": scope, "audience": audience},
            headers={"Authorization": aiohttp.encode_basic_auth(cid, secret)},
        ) as response:
            body = await response.json()
            assert response.status == 200, body
            return str(body["access_token"])

    async def client(self, name: str, scopes: list[str], audiences: list[str]) -> Client:
        async with self.http.post(
            f"{self.base}/v1/clients",
            json={
                "name": f"{name}-{secrets.token_hex(3)}",
                "grant_types": ["client_credentials"],
                "scopes": scopes,
                "audiences": audiences,
            },
            headers={"Authorization": f"Bearer {self.admin_token}"},
        ) as response:
            body = await response.json()
            assert response.status == 201, body
        return Client(self, body["client_id"], body["client_secret"])


@dataclass
class Client:
    """A registered client_credentials client; tokens cached per scope and audience."""

    identity: StackIdentity
    client_id: str
    secret: str
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    async def bearer(self, scope: str, audience: str = "fraud") -> dict[str, str]:
        key = (scope, audience)
        if key not in self.tokens:
            self.tokens[key] = await self.identity._token(
                self.identity.http,
                self.identity.base,
                self.client_id,
                self.secret,
                scope,
                audience,
            )
        return {"Authorization": f"Bearer {self.tokens[key]}"}


SCREENING_ATTEMPTS = 5


@dataclass
class Http:
    """Calls to one base URL that assert the status and parse the body."""

    http: aiohttp.ClientSession
    base: str

    async def call(
        self, method: str, path: str, headers: dict[str, str], *, expect: int, **kwargs: Any
    ) -> Any:
        async with self.http.request(
            method, f"{self.base}{path}", headers=headers, **kwargs
        ) as response:
            text = await response.text()
            assert response.status == expect, f"{method} {path}: {response.status} {text}"
            if response.status >= 400:
                assert response.content_type == PROBLEM_CONTENT_TYPE, text
            return json.loads(text) if text else None

    async def screen(self, headers: dict[str, str], body: dict[str, Any]) -> Any:
        """A screening, asked again while the service answers 503 (its decision not
        recorded in time on a busy machine), as the transaction worker does: screening
        is idempotent by transaction id."""
        for _ in range(SCREENING_ATTEMPTS - 1):
            async with self.http.post(
                f"{self.base}/internal/v1/screenings", headers=headers, json=body
            ) as response:
                if response.status != 503:
                    text = await response.text()
                    assert response.status == 200, f"screening: {response.status} {text}"
                    return json.loads(text)
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
        return await self.call("POST", "/internal/v1/screenings", headers, json=body, expect=200)


@asynccontextmanager
async def running_fraud(
    settings: Settings,
    engine: AsyncEngine,
    http: aiohttp.ClientSession,
    *,
    schema: str,
    prefix: str,
    transactions_url: str,
    name: str = "fraud-tests",
) -> AsyncIterator[tuple[Http, web.Application]]:
    """The fraud API over HTTPS on ``schema`` and Redis ``prefix``; the schema is
    dropped by the caller (several replicas may share it)."""
    wiring = Wiring(
        schema=schema,
        redis_prefix=prefix,
        transactions_url=transactions_url,
        seed_from_settings=False,
    )
    app = await create_app(settings, wiring)
    async with serve_https(app, settings, name) as base:
        await eventually(lambda: _ready(http, base), 60)
        yield Http(http, base), app


async def _ready(http: aiohttp.ClientSession, base: str) -> bool:
    async with http.get(f"{base}/readyz") as response:
        return response.status == 200


@asynccontextmanager
async def running_analyser(
    settings: Settings, *, schema: str, prefix: str, group: str
) -> AsyncIterator[web.Application]:
    """The analyser worker on ``schema`` and Redis ``prefix``, in its own consumer group,
    which starts at the current end of ``lastro.transactions``."""
    await start_group_at_end(settings, group, (TRANSACTIONS_TOPIC,))
    app = await analyser.create_app(
        settings, analyser.Wiring(schema=schema, redis_prefix=prefix, consumer_group=group)
    )
    runner = web.AppRunner(app)
    await runner.setup()  # runs the cleanup contexts: consumer, relay, freezes
    try:
        yield app
    finally:
        await runner.cleanup()


async def drop_schema(engine: AsyncEngine, schema: str) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class Publisher:
    """Publishes signed CloudEvents to the real broker, as the outbox relay would."""

    producer: AIOKafkaProducer
    signer: EventSigner

    async def send(self, topic: str, key: str, event: CloudEvent) -> CloudEvent:
        envelope = self.signer.sign(event.envelope())
        await self.producer.send_and_wait(topic, json.dumps(envelope).encode(), key=key.encode())
        return event

    async def transaction(self, status: str, data: dict[str, Any]) -> CloudEvent:
        event = new_event(
            f"lastro.transaction.{status}",
            "/transactions",
            {**data, "status": status},
            subject=data["transaction_id"],
        )
        return await self.send(TRANSACTIONS_TOPIC, data["source_account_id"], event)

    async def rule(self, rule: dict[str, Any]) -> CloudEvent:
        event = new_event(RULE_UPSERTED, SOURCE, rule, subject=rule["id"])
        return await self.send(RULES_TOPIC, rule["id"], event)


@asynccontextmanager
async def publisher(settings: Settings, signer: EventSigner) -> AsyncIterator[Publisher]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        yield Publisher(producer, signer)
    finally:
        await producer.stop()


def transaction(
    customer: str,
    account: str,
    *,
    amount: int = 2_500,
    at: datetime | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A screening request / transaction event body for ``customer``."""
    body: dict[str, Any] = {
        "transaction_id": f"txn_{secrets.token_hex(8)}",
        "type": "card_payment",
        "amount": amount,
        "currency": "EUR",
        "customer_id": customer,
        "source_account_id": account,
        "counterparty": f"mer_{secrets.token_hex(4)}",
        "device_id": f"dev_{customer}",
        "ip": "198.51.100.7",
        "country": "PT",
        "occurred_at": (at or datetime.now(UTC)).isoformat(),
    }
    body.update(fields)
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def transactions_stand_in(settings: Settings) -> Iterator[str]:
    """The transaction service stand-in as its own process; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "transactions_stand_in.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _alive(settings, base):
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            assert time.monotonic() < deadline, "transactions stand-in did not start"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def _alive(settings: Settings, base: str) -> bool:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(settings.ca_file))
    try:
        with urllib.request.urlopen(f"{base}/healthz", context=context, timeout=1) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def https_session(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(settings.ca_file), limit=100)
    )


class Contract:
    """Checks response bodies against the schema an ``openapi.yaml`` declares."""

    def __init__(self, path: Path) -> None:
        import yaml
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.document: dict[str, Any] = yaml.safe_load(path.read_text())
        self._uri = f"urn:lastro:{path.parent.name}-openapi"
        self._registry: Any = Registry().with_resource(
            self._uri, Resource.from_contents(self.document, default_specification=DRAFT202012)
        )

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        """Assert ``body`` conforms to the schema declared for (method, path, status)."""
        from jsonschema import Draft202012Validator

        pointer = f"/paths/{path.replace('~', '~0').replace('/', '~1')}/{method.lower()}"
        response: dict[str, Any] = self._at(pointer)["responses"][str(status)]
        pointer = f"{pointer}/responses/{status}"
        while "$ref" in response:
            pointer = response["$ref"].removeprefix("#")
            response = self._at(pointer)
        (media,) = response["content"]
        schema_ptr = f"{pointer}/content/{media.replace('/', '~1')}/schema"
        validator = Draft202012Validator(
            {"$ref": f"{self._uri}#{schema_ptr}"},
            registry=self._registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, f"{method} {path} {status} breaks its schema: {errors}"

    def _at(self, pointer: str) -> Any:
        node: Any = self.document
        for token in pointer.split("/")[1:]:
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node
