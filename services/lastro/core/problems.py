"""RFC 9457 problem details: the one error shape every Lastro service answers with.

Handlers raise :class:`Problem`; the HTTP app factory (``core/http.py``) turns it,
and every other failure, into an ``application/problem+json`` response. A problem's
``type`` is a stable URI ``https://lastro.dev/problems/<slug>`` that clients may
switch on; ``title`` is the same for every occurrence of a type; ``detail`` explains
this occurrence and must never carry secrets, PII or internals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
PROBLEM_BASE_URI: Final = "https://lastro.dev/problems/"

# Members a caller may not override through ``extra``: they are the RFC 9457 core.
_RESERVED: Final = frozenset({"type", "title", "status", "detail", "instance"})


def problem_type(slug: str) -> str:
    """The stable type URI for ``slug`` (``malformed-json`` → ``https://lastro.dev/problems/malformed-json``)."""
    return PROBLEM_BASE_URI + slug


def status_slug(status: int) -> str:
    """A slug derived from the HTTP reason phrase (404 → ``not-found``)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "http-error"
    return phrase.lower().replace(" ", "-").replace("'", "")


class Problem(Exception):
    """A failure a handler reports to the client as problem+json.

    ``extra`` members become top-level extension members of the document
    (for example ``errors`` for validation failures or ``balance`` for a
    declined posting); ``headers`` are added to the response.
    """

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        clash = _RESERVED.intersection(extra)
        if clash:
            raise ValueError(f"extension members may not redefine {sorted(clash)}")
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers: Mapping[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = extra

    @property
    def type(self) -> str:
        return problem_type(self.slug)

    def document(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 JSON object for this problem."""
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def to_response(self, instance: str | None = None) -> web.Response:
        """Render as an ``application/problem+json`` response with this problem's headers."""
        return web.Response(
            status=self.status,
            body=json.dumps(self.document(instance), separators=(",", ":")).encode(),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )


def validation_problem(errors: list[dict[str, str]]) -> Problem:
    """422 listing every offending field as ``{"field": ..., "detail": ...}``."""
    fields = ", ".join(sorted({e["field"] for e in errors}))
    return Problem(
        422,
        "validation-error",
        "Request validation failed",
        f"Invalid fields: {fields}",
        errors=errors,
    )
