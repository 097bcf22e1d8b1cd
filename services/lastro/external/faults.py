"""Faults a simulated provider injects on its API for tests (what
:mod:`lastro.external.provider` describes under **Faults**): latency, an error
rate, an outage (503 or a dropped connection), a hang, before or after the effect;
and the admin routes that set, show and clear them."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from lastro.core.http import json_body, json_response
from lastro.core.problems import Problem

log = logging.getLogger(__name__)

API_PREFIX: Final = "/v1/"
HANG_LIMIT_SECONDS: Final = 120.0

OutageMode = Literal["unavailable", "disconnect"]


@dataclass(frozen=True)
class Faults:
    """The faults in force (module docstring); the default is none."""

    latency_ms: int = 0
    error_rate: Decimal = Decimal(0)
    outage: bool = False
    outage_mode: OutageMode = "unavailable"
    timeout: bool = False
    after_effect: bool = False
    seed: int | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Faults:
        """From a contract-validated ``/admin/faults`` body (the contract bounds
        ``error_rate`` to a decimal string from 0 to 1)."""
        return cls(
            latency_ms=int(doc.get("latency_ms", 0)),
            error_rate=Decimal(doc.get("error_rate", "0")),
            outage=bool(doc.get("outage", False)),
            outage_mode=doc.get("outage_mode", "unavailable"),
            timeout=bool(doc.get("timeout", False)),
            after_effect=bool(doc.get("after_effect", False)),
            seed=doc.get("seed"),
        )

    def document(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["error_rate"] = str(self.error_rate)
        return doc


class FaultInjector:
    """Applies the faults in force to the provider's API (module docstring)."""

    def __init__(self) -> None:
        self.faults = Faults()
        self._rng = random.Random()
        self._changed = asyncio.Event()

    def replace(self, faults: Faults) -> None:
        """Put ``faults`` in force; requests held by a timeout fault are let go (504)."""
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._changed.set()
        self._changed = asyncio.Event()

    def _error_drawn(self) -> bool:
        rate = self.faults.error_rate
        return rate > 0 and self._rng.randrange(1_000_000) < int(rate * 1_000_000)

    async def _hang(self) -> Problem:
        changed = self._changed
        with suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), HANG_LIMIT_SECONDS)
        return Problem(504, "provider-timeout", "Provider timed out", "Injected timeout.")

    async def _strike(self) -> Problem | None:
        """The error or timeout fault of this request, if any."""
        if self.faults.timeout:
            return await self._hang()
        if self._error_drawn():
            return Problem(500, "provider-error", "Provider error", "Injected error.")
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.outage:
            unavailable = Problem(
                503,
                "provider-unavailable",
                "Provider unavailable",
                "Injected outage.",
                headers={"Retry-After": "5"},
            )
            if faults.outage_mode == "disconnect" and request.transport is not None:
                request.transport.abort()  # the client sees the connection drop, no answer
            return unavailable.to_response(instance=request.path)
        if not faults.after_effect:
            before = await self._strike()
            if before is not None:
                return before.to_response(instance=request.path)
        response = await handler(request)
        if faults.after_effect:
            lost = await self._strike()
            if lost is not None:
                return lost.to_response(instance=request.path)
        return response


FAULTS_KEY: Final = web.AppKey("faults", FaultInjector)


async def _show_faults(request: web.Request) -> web.Response:
    return json_response(request.app[FAULTS_KEY].faults.document())


async def _set_faults(request: web.Request) -> web.Response:
    faults = Faults.from_document(await json_body(request))
    request.app[FAULTS_KEY].replace(faults)
    log.warning("faults in force: %s", faults.document())
    return json_response(faults.document())


async def _reset_faults(request: web.Request) -> web.Response:
    request.app[FAULTS_KEY].replace(Faults())
    log.warning("faults cleared")
    return json_response(Faults().document())


ADMIN_ROUTES: Final = (
    web.get("/admin/faults", _show_faults),
    web.post("/admin/faults", _set_faults),
    web.post("/admin/reset", _reset_faults),
)
