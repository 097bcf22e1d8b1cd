"""The simulated third parties as real processes, for the test_external_* modules.

:class:`ProviderProcess` runs ``lastro serve fx|acquirer|sms`` exactly as the dev
stack does, but in its own directory (own dev CA, own state file), on a free port
and with its own API key, so a test may inject faults, kill and restart it, or point
the acquirer's callbacks at itself without touching the stack the other tests use.
:class:`SettlementReceiver` is an HTTPS endpoint standing in for the transaction
service's settlement route: it records every callback and answers the statuses it is
told to. :class:`Contract` checks response bodies against a provider's openapi.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from lastro.core.security.tls import client_context, server_context
from lastro.devstack.ca import DevCA

START_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ProviderProcess:
    """One simulated provider process under ``dev_dir`` (see module docstring)."""

    name: str
    dev_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    api_key: str = field(default_factory=lambda: "test_" + secrets.token_urlsafe(18))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.dev_dir / "ca" / "ca.pem"

    @property
    def log_file(self) -> Path:
        return self.dev_dir / f"{self.name}.log"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def env(self) -> dict[str, str]:
        prefix = "LASTRO_" + self.name.upper()
        return {
            **os.environ,
            "LASTRO_DEV_DIR": str(self.dev_dir),
            f"{prefix}_PORT": str(self.port),
            f"{prefix}_API_KEY": self.api_key,
            **self.extra_env,
        }

    def start(self) -> None:
        DevCA(self.dev_dir / "ca").ensure()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lastro.cli", "serve", self.name],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", context=context, timeout=1):  # noqa: S310
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"{self.name} did not start:\n{self.log_file.read_text()[-3000:]}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the process (SIGKILL: a crash, nothing flushed on the way out)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(timeout=30)
        self.process = None

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """A client that trusts this provider's CA and sends its API key."""
        return aiohttp.ClientSession(
            base_url=self.base,
            headers=self.headers,
            connector=aiohttp.TCPConnector(ssl=client_context(self.ca_file), force_close=True),
            **kwargs,
        )


@asynccontextmanager
async def running(
    name: str, dev_dir: Path, extra_env: dict[str, str] | None = None
) -> AsyncIterator[ProviderProcess]:
    provider = ProviderProcess(name, dev_dir, extra_env or {})
    await asyncio.to_thread(provider.start)
    try:
        yield provider
    finally:
        await asyncio.to_thread(provider.stop)


@dataclass
class Callback:
    headers: dict[str, str]
    body: bytes
    received_at: float


class SettlementReceiver:
    """An HTTPS endpoint recording every POST; it answers 200, except 500 to the
    first ``times`` deliveries whose body contains a string given to :meth:`refuse`."""

    def __init__(self, dev_dir: Path) -> None:
        self.dev_dir = dev_dir
        self.received: list[Callback] = []
        self._refusals: dict[str, int] = {}
        self.port = 0
        self._arrived = asyncio.Event()

    def refuse(self, marker: str, times: int) -> None:
        self._refusals[marker] = times

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/internal/v1/acquirer/settlements"

    async def _take(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Callback(dict(request.headers), body, time.time()))
        self._arrived.set()
        for marker, times in self._refusals.items():
            if times > 0 and marker.encode() in body:
                self._refusals[marker] = times - 1
                return web.Response(status=500)
        return web.Response(status=200)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[SettlementReceiver]:
        app = web.Application()
        app.router.add_post("/internal/v1/acquirer/settlements", self._take)
        runner = web.AppRunner(app)
        await runner.setup()
        issued = DevCA(self.dev_dir / "ca").issue("receiver")
        self.port = free_port()
        site = web.TCPSite(
            runner, "127.0.0.1", self.port, ssl_context=server_context(issued.cert, issued.key)
        )
        await site.start()
        try:
            yield self
        finally:
            await runner.cleanup()

    async def wait_for(self, predicate: Any, within: float = 20.0) -> list[Callback]:
        """The callbacks received once ``predicate(callbacks)`` holds."""
        deadline = time.monotonic() + within
        while not predicate(self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"callbacks never satisfied the test: {self.received}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))
        return self.received


class Contract:
    """Response bodies checked against the schema the provider's contract declares."""

    def __init__(self, path: Path) -> None:
        self.document: dict[str, Any] = yaml.safe_load(path.read_text())
        self._uri = f"urn:lastro:{path.name}"
        self._registry: Registry[Any] = Registry().with_resource(
            self._uri, Resource.from_contents(self.document, default_specification=DRAFT202012)
        )

    def check(self, method: str, template: str, status: int, body: Any) -> None:
        escaped = template.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{method.lower()}/responses/{status}"
        response = self._at(pointer)
        while "$ref" in response:
            pointer = response["$ref"].removeprefix("#")
            response = self._at(pointer)
        (media,) = response["content"]
        schema = {"$ref": f"{self._uri}#{pointer}/content/{media.replace('/', '~1')}/schema"}
        validator = Draft202012Validator(
            schema, registry=self._registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, f"{method} {template} {status} breaks its schema: {errors}"

    def check_schema(self, name: str, body: Any) -> None:
        """``body`` against ``components/schemas/<name>``."""
        validator = Draft202012Validator(
            {"$ref": f"{self._uri}#/components/schemas/{name}"},
            registry=self._registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, f"{name} breaks its schema: {errors}"

    def _at(self, pointer: str) -> Any:
        node: Any = self.document
        for token in pointer.split("/")[1:]:
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node
