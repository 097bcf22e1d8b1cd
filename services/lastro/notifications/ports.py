"""What the dispatcher is given: its configuration (retry policy, lease, when an
endpoint is disabled) and the ports it sends through (contacts from accounts, the
webhook, e-mail and SMS channels), so ``dispatch.py`` holds only the use cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from lastro.core.config import NotificationSettings
from lastro.notifications.domain.delivery import RetryPolicy, Sent
from lastro.notifications.domain.preferences import Contact
from lastro.notifications.domain.templates import Email


@dataclass(frozen=True)
class DispatchConfig:
    retry: RetryPolicy
    lease: timedelta
    disable_after: int
    max_event_age: timedelta
    batch: int = 32

    @classmethod
    def from_settings(cls, settings: NotificationSettings) -> DispatchConfig:
        return cls(
            retry=RetryPolicy(
                timedelta(seconds=settings.retry_base_seconds),
                timedelta(seconds=max(settings.retry_cap_seconds, settings.retry_base_seconds)),
                settings.max_attempts,
            ),
            lease=timedelta(seconds=settings.lease_seconds),
            disable_after=settings.disable_after_failures,
            max_event_age=timedelta(seconds=settings.max_event_age_seconds),
        )


class Contacts(Protocol):
    async def contact(self, customer_id: str) -> Contact | None: ...


class WebhookChannel(Protocol):
    async def send(
        self, url: str, delivery_id: str, payload: Mapping[str, Any], secrets: Sequence[str]
    ) -> Sent: ...


class EmailChannel(Protocol):
    async def send(self, delivery_id: str, to: str, mail: Email) -> Sent: ...


class SmsChannel(Protocol):
    async def send(self, delivery_id: str, to: str, body: str) -> Sent: ...
