"""Killed mid-delivery: the service dies (SIGKILL) after the receiver has the webhook
and before the service recorded the answer, and the event was published twice. The
restarted service sends the same message again under the same ``webhook-id`` and
nothing else: the receiver de-duplicates to exactly one notification."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from notifications_kit import (
    USER_SCOPES,
    check_response,
    event_publisher,
    eventually,
    free_port,
    start_group_at_end,
    webhook_receiver,
)
from schemas import unique_schema
from sqlalchemy.ext.asyncio import AsyncEngine

from issuerkit import TestIssuer
from lastro.core.config import Settings
from lastro.core.events import CloudEvent, EventSigner
from lastro.core.security.tls import client_context
from lastro.notifications import events

HERE = Path(__file__).parent
COMPRESSED_ENV = {
    "LASTRO_NOTIFICATIONS_RETRY_BASE_SECONDS": "0.05",
    "LASTRO_NOTIFICATIONS_RETRY_CAP_SECONDS": "0.4",
    "LASTRO_NOTIFICATIONS_MAX_ATTEMPTS": "4",
    "LASTRO_NOTIFICATIONS_LEASE_SECONDS": "3",
    "LASTRO_NOTIFICATIONS_POLL_SECONDS": "0.05",
    "LASTRO_NOTIFICATIONS_WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
}


class Service:
    """The service process on a fixed schema, group and port; start, kill, start again."""

    def __init__(self, schema: str, group: str, jwks: Path) -> None:
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self._argv = [
            sys.executable,
            str(HERE / "notifications_process.py"),
            "--schema",
            schema,
            "--group",
            group,
            "--port",
            str(self.port),
            "--jwks",
            str(jwks),
        ]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self._argv, env={**os.environ, **COMPRESSED_ENV}
        )

        async def ready() -> bool:
            try:
                async with http.get(f"{self.base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, 60, "the notification service process")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def test_killed_between_sending_and_recording_and_given_the_event_twice_it_notifies_once(
    settings: Settings,
    engine: AsyncEngine,
    signer: EventSigner,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    schema = unique_schema("notif_crash")
    group = f"notifications-test-{schema}"
    issuer = TestIssuer(issuer="https://identity.test", audience="notifications")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    auth = {"Authorization": f"Bearer {issuer.mint(scope=USER_SCOPES, subject=owner)}"}
    await start_group_at_end(settings, group, events.CONSUMED_TOPICS)
    service = Service(schema, group, jwks)

    async def api(method: str, path: str, expect: int, **kwargs: Any) -> Any:
        async with http.request(method, service.base + path, headers=auth, **kwargs) as response:
            body = await response.json(content_type=None)
            assert response.status == expect, body
            return body

    try:
        async with (
            webhook_receiver(settings) as receiver,
            event_publisher(settings, engine, signer) as publisher,
        ):
            await service.start(http)
            created = await api("POST", "/v1/webhook-endpoints", 201, json={"url": receiver.url})
            receiver.secrets.append(created["secret"])
            receiver.hold = asyncio.Event()  # the first answer never reaches the service

            event = CloudEvent(
                type="lastro.identity.login_new_device",
                source="/identity",
                subject=owner,
                data={
                    "user_id": owner,
                    "device": {"id": "dev_crash", "user_agent": "Firefox on Linux"},
                    "ip": "203.0.113.9",
                    "at": datetime.now(UTC).isoformat(),
                },
            )
            await publisher.publish(event, topic="lastro.identity", key=owner)
            await asyncio.wait_for(receiver.arrived.wait(), 30)
            await service.kill()  # the receiver holds the webhook; nothing was recorded
            held, receiver.hold = receiver.hold, None
            held.set()

            await publisher.republish(event)  # and the same event arrives again
            await service.start(http)

            async def delivered() -> list[dict[str, Any]] | None:
                page = await api("GET", f"/v1/deliveries?event_id={event.id}", 200)
                done = [d for d in page["data"] if d["status"] == "delivered"]
                return page["data"] if done else None

            (delivery,) = await eventually(delivered, 60, "the delivery after the restart")
            log = await api("GET", f"/v1/deliveries/{delivery['id']}", 200)
            check_response("GET", "/v1/deliveries/{id}", 200, log)
    finally:
        await service.stop()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    assert receiver.ids() == {delivery["id"]}, "every attempt carries the same webhook-id"
    assert len(receiver.received) == 2
    assert all(r.verified_with == [0] for r in receiver.received)
    assert [a["outcome"] for a in log["attempts"]] == ["interrupted", "delivered"]
