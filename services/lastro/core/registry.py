"""The one list of every process the platform runs.

Config (ports), ``lastro serve``, the identity service (token audiences and the scopes
it may grant), the dev stack (what to start, in which order) and the tests read this
module; nothing else lists services. It imports nothing from Lastro, so any module may
import it.

A process is one of:

* ``api``: an HTTPS service; its module has ``async def create_app(settings) ->
  web.Application`` (the operational routes ``/healthz``, ``/readyz``, ``/metrics``
  come from ``core/http.py``); it owns a PostgreSQL schema and is a token audience.
* ``worker``: a consumer of Kafka that answers no API; its module still has
  ``create_app`` (an app with only the operational routes, its consumers in
  ``cleanup_ctx``) so that probes and Prometheus reach it on its own port.
* ``external``: a simulated third party (FX provider, card acquirer, SMS gateway),
  run locally only; it trusts no Lastro token.
* ``operator``: the Kopf operator; its module has ``def run(settings) -> int``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

Kind = Literal["api", "worker", "external", "operator"]


@dataclass(frozen=True)
class ServiceSpec:
    """One process: ``name`` is what ``lastro serve`` takes and what the dev stack
    calls its component; ``scopes`` are the OAuth scopes the service's routes accept
    (the identity service grants only scopes some service declares);
    ``holds_personal_data`` says it answers the privacy API (``core/privacy.py``), so
    data-subject requests (``lastro gdpr``) fan out to it."""

    name: str
    module: str
    kind: Kind
    port: int | None = None
    audience: str | None = None
    schema: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    holds_personal_data: bool = False

    @property
    def env_prefix(self) -> str:
        """``LASTRO_<NAME>`` (``transactions-worker`` → ``LASTRO_TRANSACTIONS_WORKER``)."""
        return "LASTRO_" + self.name.upper().replace("-", "_")


PRIVACY_SCOPE: Final = "privacy:admin"
"""Every service holding personal data answers the privacy API (export, erase,
purge) to a service token with this scope and its own audience."""

# In start order: a service comes after the ones it calls at start.
SERVICES: Final[tuple[ServiceSpec, ...]] = (
    ServiceSpec(
        "identity",
        "lastro.identity.app",
        "api",
        port=7001,
        audience="identity",
        schema="identity",
        # openid and profile: OpenID Connect (ID tokens, the userinfo endpoint)
        scopes=frozenset({"identity:admin", "identity:self", "openid", "profile", PRIVACY_SCOPE}),
        holds_personal_data=True,
    ),
    ServiceSpec(
        "accounts",
        "lastro.accounts.app",
        "api",
        port=7002,
        audience="accounts",
        schema="accounts",
        scopes=frozenset(
            {
                "accounts:read",
                "accounts:write",
                "accounts:admin",
                "ledger:read",
                "ledger:write",
                "customers:contact",
                PRIVACY_SCOPE,
            }
        ),
        holds_personal_data=True,
    ),
    ServiceSpec("fx", "lastro.external.fx", "external", port=7101),
    ServiceSpec("acquirer", "lastro.external.acquirer", "external", port=7102),
    ServiceSpec("sms", "lastro.external.sms", "external", port=7103),
    ServiceSpec(
        "fraud",
        "lastro.fraud.app",
        "api",
        port=7004,
        audience="fraud",
        schema="fraud",
        scopes=frozenset({"fraud:read", "fraud:screen", "fraud:admin", PRIVACY_SCOPE}),
        holds_personal_data=True,
    ),
    ServiceSpec("fraud-analyser", "lastro.fraud.analyser", "worker", port=7014, schema="fraud"),
    ServiceSpec(
        "transactions",
        "lastro.transactions.app",
        "api",
        port=7003,
        audience="transactions",
        schema="transactions",
        scopes=frozenset(
            {
                "transfers:read",
                "transfers:write",
                "payments:read",
                "payments:write",
                "payouts:write",
                "transactions:admin",
                "transactions:review",
                PRIVACY_SCOPE,
            }
        ),
        holds_personal_data=True,
    ),
    ServiceSpec(
        "transactions-worker",
        "lastro.transactions.worker",
        "worker",
        port=7013,
        schema="transactions",
    ),
    ServiceSpec(
        "notifications",
        "lastro.notifications.app",
        "api",
        port=7005,
        audience="notifications",
        schema="notifications",
        scopes=frozenset({"notifications:read", "notifications:write", PRIVACY_SCOPE}),
        holds_personal_data=True,
    ),
    ServiceSpec("operator", "lastro_operator.main", "operator"),
)

BY_NAME: Final[dict[str, ServiceSpec]] = {spec.name: spec for spec in SERVICES}

PLATFORM_SCHEMA: Final = "platform"
"""Schema for platform-wide records (test fixtures, erasure certificates)."""


def service(name: str) -> ServiceSpec:
    """The spec named ``name``; KeyError names the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(BY_NAME)}") from None


def audiences() -> frozenset[str]:
    """Every token audience: the API services."""
    return frozenset(s.audience for s in SERVICES if s.audience is not None)


def privacy_services() -> tuple[ServiceSpec, ...]:
    """The services answering the privacy API, in start order (identity first)."""
    return tuple(s for s in SERVICES if s.holds_personal_data and s.audience is not None)


def scopes() -> frozenset[str]:
    """Every scope some service accepts: what the identity service may grant."""
    return frozenset().union(*(s.scopes for s in SERVICES))


def schemas() -> tuple[str, ...]:
    """Every PostgreSQL schema, each once, in service order, then the platform's."""
    ordered = dict.fromkeys(s.schema for s in SERVICES if s.schema is not None)
    return (*ordered, PLATFORM_SCHEMA)


def default_ports() -> dict[str, int]:
    """Default local port of every process that listens."""
    return {s.name: s.port for s in SERVICES if s.port is not None}
