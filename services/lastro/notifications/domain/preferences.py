"""Customer preferences and the routing rule they feed.

A customer (or the user owning them) chooses the channels of each kind of message,
a locale, a time zone, quiet hours and whether they consent to marketing. The rule
(:func:`customer_messages`): a kind's channels are the customer's choice or the
kind's defaults; only channels the customer has an address for are used; a
non-urgent message waits until the quiet hours end; an urgent one (security,
fraud) is sent at once and can never be switched off entirely: an empty choice
means the defaults. Events older than the configured age produce no customer
message (a week-old "transfer completed" is noise); merchants' webhooks are not
affected by that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lastro.notifications.domain.errors import InvalidPreferences
from lastro.notifications.domain.kinds import (
    CUSTOMER_CHANNELS,
    CUSTOMER_KINDS,
    SPECS,
    Channel,
    Kind,
)

LOCALES: Final = ("en", "pt-BR")
DEFAULT_LOCALE: Final = "en"
DEFAULT_TIMEZONE: Final = "UTC"
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class QuietHours:
    """Local times between which non-urgent messages wait; ``start > end`` spans
    midnight (22:00-07:00)."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


@dataclass(frozen=True)
class Preferences:
    customer_id: str
    locale: str = DEFAULT_LOCALE
    timezone: str = DEFAULT_TIMEZONE
    quiet_hours: QuietHours | None = None
    channels: Mapping[Kind, frozenset[Channel]] = field(default_factory=dict)
    marketing_consent: bool = False
    updated_at: datetime | None = None

    def channels_for(self, kind: Kind) -> frozenset[Channel]:
        spec = SPECS[kind]
        chosen = self.channels.get(kind, spec.default_channels)
        if spec.urgent and not chosen:
            return spec.default_channels
        return chosen

    def quiet_until(self, now: datetime) -> datetime | None:
        """When the quiet hours around ``now`` end (UTC), or None outside them."""
        if self.quiet_hours is None:
            return None
        zone = ZoneInfo(self.timezone)
        local = now.astimezone(zone)
        if not self.quiet_hours.contains(local.time().replace(tzinfo=None)):
            return None
        end_day = local.date()
        if local.time().replace(tzinfo=None) >= self.quiet_hours.end:
            end_day += timedelta(days=1)
        return datetime.combine(end_day, self.quiet_hours.end, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class Contact:
    """Where a customer can be reached, as accounts answers it (never stored in clear)."""

    customer_id: str
    owner: str
    email: str | None
    phone: str | None


def e164(phone: str | None) -> str | None:
    """A phone number in E.164 (``+5511912345678``) from the way accounts stores it
    (international form, maybe with spaces, dashes or brackets); None when it is not
    one (no SMS then)."""
    if not phone:
        return None
    digits = "".join(ch for ch in phone if ch.isdigit())
    if not phone.lstrip().startswith("+") or not 8 <= len(digits) <= 15:
        return None
    return "+" + digits


@dataclass(frozen=True)
class CustomerMessage:
    channel: Channel
    not_before: datetime


def is_stale(occurred_at: datetime, now: datetime, max_age: timedelta) -> bool:
    """True when an event is too old to tell a customer about."""
    return now - occurred_at > max_age


def customer_messages(
    kind: Kind, preferences: Preferences, contact: Contact, now: datetime
) -> list[CustomerMessage]:
    """The customer's messages for one ``kind`` (see the module docstring), in
    channel order; the caller has already ruled out stale events."""
    if not SPECS[kind].customer:
        return []
    reachable = {
        channel
        for channel, address in ((Channel.EMAIL, contact.email), (Channel.SMS, contact.phone))
        if address
    }
    due = now if SPECS[kind].urgent else (preferences.quiet_until(now) or now)
    chosen = preferences.channels_for(kind) & reachable
    return [CustomerMessage(channel, due) for channel in sorted(chosen)]


# ---------------------------------------------------------------- parsing


def _clock(value: Any, field: str) -> time:
    if not isinstance(value, str) or not _CLOCK.fullmatch(value):
        raise InvalidPreferences(f"{field} must be a local time HH:MM", field=field)
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidPreferences("timezone must be an IANA zone name", field="timezone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidPreferences(f"unknown time zone {value!r}", field="timezone") from None
    return value


def _channels(value: Any) -> dict[Kind, frozenset[Channel]]:
    if not isinstance(value, dict):
        raise InvalidPreferences("channels must map kinds to channel lists", field="channels")
    chosen: dict[Kind, frozenset[Channel]] = {}
    for name, channels in value.items():
        where = f"channels.{name}"
        if name not in CUSTOMER_KINDS:
            raise InvalidPreferences(f"{name!r} is not a customer notification kind", field=where)
        if not isinstance(channels, list) or not all(c in CUSTOMER_CHANNELS for c in channels):
            raise InvalidPreferences("channels are a list of 'email' and 'sms'", field=where)
        chosen[Kind(name)] = frozenset(Channel(c) for c in channels)
    return chosen


def parse_preferences(customer_id: str, body: Mapping[str, Any], now: datetime) -> Preferences:
    """Preferences from a request body (every field optional, defaults otherwise);
    raises InvalidPreferences naming the field."""
    locale = body.get("locale", DEFAULT_LOCALE)
    if locale not in LOCALES:
        raise InvalidPreferences(f"locale must be one of {', '.join(LOCALES)}", field="locale")
    quiet = body.get("quiet_hours")
    quiet_hours = None
    if quiet is not None:
        if not isinstance(quiet, dict):
            raise InvalidPreferences("quiet_hours needs start and end", field="quiet_hours")
        quiet_hours = QuietHours(
            _clock(quiet.get("start"), "quiet_hours.start"),
            _clock(quiet.get("end"), "quiet_hours.end"),
        )
        if quiet_hours.start == quiet_hours.end:
            raise InvalidPreferences("quiet hours must not be empty", field="quiet_hours")
    consent = body.get("marketing_consent", False)
    if not isinstance(consent, bool):
        raise InvalidPreferences("marketing_consent is true or false", field="marketing_consent")
    return Preferences(
        customer_id=customer_id,
        locale=locale,
        timezone=_timezone(body.get("timezone", DEFAULT_TIMEZONE)),
        quiet_hours=quiet_hours,
        channels=_channels(body.get("channels", {})),
        marketing_consent=consent,
        updated_at=now,
    )


def preferences_fields(preferences: Preferences) -> dict[str, Any]:
    """The JSON shape of preferences (API answers, storage, export)."""
    quiet = preferences.quiet_hours
    return {
        "customer_id": preferences.customer_id,
        "locale": preferences.locale,
        "timezone": preferences.timezone,
        "quiet_hours": None
        if quiet is None
        else {"start": quiet.start.strftime("%H:%M"), "end": quiet.end.strftime("%H:%M")},
        "channels": {
            kind.value: sorted(c.value for c in channels)
            for kind, channels in sorted(preferences.channels.items())
        },
        "marketing_consent": preferences.marketing_consent,
        "updated_at": None
        if preferences.updated_at is None
        else preferences.updated_at.isoformat(),
    }
