"""The account service served in-process over HTTPS for integration tests.

:func:`running_accounts` builds the real application (real PostgreSQL schema,
KMS, Kafka relay, hold sweeper) on a throwaway schema, serves it with aiohttp's
TestServer over TLS with a dev-CA certificate on a random port, and gives a
client that verifies that certificate. Tokens come from a :class:`TestIssuer`
the app is told to trust. :func:`check_response` validates a response body
against the schema ``openapi.yaml`` declares for that operation and status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemas import unique_schema
from sqlalchemy.ext.asyncio import AsyncEngine

from issuerkit import TestIssuer
from lastro.accounts import api
from lastro.accounts.app import OPENAPI, create_app
from lastro.accounts.customers import Customers
from lastro.accounts.service import Ledger
from lastro.core.config import Settings
from lastro.core.problems import PROBLEM_CONTENT_TYPE
from lastro.core.security.fields import PII_KEY
from lastro.core.security.tls import client_context, server_context
from lastro.devstack.ca import DevCA

CUSTOMER_SCOPES = "accounts:read accounts:write"
SERVICE_SCOPES = "ledger:read ledger:write"
ADMIN_SCOPES = "accounts:admin"

_DOCUMENT: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
_URI = "urn:lastro:accounts-openapi"
_REGISTRY: Registry[Any] = Registry().with_resource(
    _URI, Resource.from_contents(_DOCUMENT, default_specification=DRAFT202012)
)


def check_response(method: str, path: str, status: int, body: Any) -> None:
    """Assert ``body`` conforms to the schema declared for (method, path, status)."""
    pointer = f"/paths/{path.replace('~', '~0').replace('/', '~1')}/{method.lower()}"
    response: dict[str, Any] = _at(pointer)["responses"][str(status)]
    pointer = f"{pointer}/responses/{status}"
    while "$ref" in response:
        pointer = response["$ref"].removeprefix("#")
        response = _at(pointer)
    (media,) = response["content"]
    schema_ptr = f"{pointer}/content/{media.replace('/', '~1')}/schema"
    validator = Draft202012Validator(
        {"$ref": f"{_URI}#{schema_ptr}"},
        registry=_REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"{method} {path} {status} breaks its schema: {errors}"


def _at(pointer: str) -> Any:
    node: Any = _DOCUMENT
    for token in pointer.split("/")[1:]:
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


@dataclass
class AccountsApi:
    """A running account service and the means to call it."""

    client: TestClient[web.Request, web.Application]
    issuer: TestIssuer
    app: web.Application
    schema: str

    @property
    def ledger(self) -> Ledger:
        return self.app[api.LEDGER_KEY]

    @property
    def customers(self) -> Customers:
        return self.app[api.CUSTOMERS_KEY]

    def bearer(self, scope: str, subject: str = "usr_test", **claims: Any) -> dict[str, str]:
        token = self.issuer.mint(scope=scope, subject=subject, **claims)
        return {"Authorization": f"Bearer {token}"}

    def customer(self, subject: str) -> dict[str, str]:
        return self.bearer(CUSTOMER_SCOPES, subject, client_id="cli_app")

    def service(self) -> dict[str, str]:
        return self.bearer(SERVICE_SCOPES, "svc_transactions", client_id="svc_transactions")

    def admin(self) -> dict[str, str]:
        return self.bearer(ADMIN_SCOPES, "usr_operator", client_id="cli_backoffice")

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
        """Send a request, assert the status, parse the body and, when ``template``
        names the operation, check the body against its response schema."""
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            text = await response.text()
            assert response.status == expect, f"{method} {path}: {response.status} {text}"
            if response.status >= 400:
                assert response.content_type == PROBLEM_CONTENT_TYPE, text
            body = await response.json(content_type=None)
        if template is not None:
            check_response(method, template, expect, body)
        return body


@asynccontextmanager
async def running_accounts(
    settings: Settings, engine: AsyncEngine, prefix: str, *, pii_key: str = PII_KEY
) -> AsyncIterator[AccountsApi]:
    """The account service on a fresh schema over HTTPS; the schema is dropped after."""
    schema = unique_schema(prefix)
    issuer = TestIssuer(issuer="https://identity.test", audience="accounts")
    app = await create_app(settings, verifier=issuer.verifier(), schema=schema, pii_key=pii_key)
    cert = DevCA(settings.dev_dir / "ca").issue("accounts-tests")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_context(cert.cert, cert.key))
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file), limit=200)
    client: TestClient[web.Request, web.Application] = TestClient(server, connector=connector)
    try:
        await client.start_server()
        yield AccountsApi(client, issuer, app, schema)
    finally:
        await client.close()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
