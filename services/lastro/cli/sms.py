"""`lastro dev sms`: the text messages the simulated SMS gateway received."""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request
from typing import Any

from lastro.core.config import Settings


def received_messages(
    settings: Settings, *, to: str | None = None, reference: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The gateway's ``GET /v1/messages``, newest first, with its API key."""
    query = {k: v for k, v in (("to", to), ("reference", reference)) if v}
    query["limit"] = str(limit)
    url = f"{settings.service_url('sms')}/v1/messages?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(  # noqa: S310 - the stack's own HTTPS URL
        url, headers={"Authorization": f"Bearer {settings.partner_api_keys['sms']}"}
    )
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
        messages: list[dict[str, Any]] = json.load(response)["messages"]
    return messages


def render(messages: list[dict[str, Any]]) -> str:
    if not messages:
        return "no messages"
    lines = [f"{'received':<28}{'to':<18}{'reference':<30}body"]
    for m in messages:
        body = m["body"].replace("\n", " ")
        lines.append(f"{m['created_at']:<28}{m['to']:<18}{m['reference'] or '-':<30}{body}")
    return "\n".join(lines)
