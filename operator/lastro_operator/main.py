"""`lastro serve operator`: wiring (clients in memo, Kopf settings) and the run loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf

from lastro.core.config import ConfigError, Settings
from lastro.core.security.service_tokens import ServiceTokenClient
from lastro.core.security.tls import client_context
from lastro_operator import fraudrule, retentionpolicy
from lastro_operator.clients import FraudAdmin, PrivacyAPI
from lastro_operator.expressions import default_validator

HANDLERS = (fraudrule, retentionpolicy)  # imported for the handlers they register
FINALIZER = "lastro.io/operator"


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Where Kopf keeps its bookkeeping: annotations under lastro.io, not status fields
    the CRDs do not declare (the API server would prune them)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lastro.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="lastro.io", key="last-handled-configuration"
    )
    # No watching of CRDs and namespaces (cluster-wide rights the operator does not
    # need): its two resources are resolved once at start, in the namespace it watches.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, its ServiceAccount token; elsewhere, the file named by KUBECONFIG
    (read when the operator logs in, so a test or a person can point it anywhere)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def open_clients(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Build the clients once; anything already in memo (a test's stand-ins) is kept."""
    configure_kopf(settings)
    config: Settings = memo.config
    memo.setdefault("validator", default_validator())
    memo.setdefault("ack_timeout", float(config.operator_ack_timeout))
    if "tokens" not in memo:
        if not (config.operator_client_id and config.operator_client_secret):
            # Permanent: waiting will not bring the credentials; the operator stops.
            raise kopf.PermanentError(MISSING_CREDENTIALS)
        memo.tokens = ServiceTokenClient.from_settings(
            config, config.operator_client_id, config.operator_client_secret
        )
        memo.owned_tokens = memo.tokens
    memo.http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(config.ca_file)),
        timeout=aiohttp.ClientTimeout(total=None),
    )
    memo.setdefault("fraud", FraudAdmin.create(config.service_url("fraud"), memo.http, memo.tokens))
    privacy: dict[str, PrivacyAPI] = {}

    def privacy_api(service: str) -> PrivacyAPI:
        if service not in privacy:
            privacy[service] = PrivacyAPI.create(
                service, config.service_url(service), memo.http, memo.tokens
            )
        return privacy[service]

    memo.setdefault("privacy", privacy_api)


@kopf.on.cleanup()
async def close_clients(memo: kopf.Memo, **_: Any) -> None:
    await memo.http.close()
    if memo.get("owned_tokens") is not None:
        await memo.owned_tokens.close()


async def operate(
    config: Settings,
    *,
    memo: kopf.Memo | None = None,
    liveness: bool = True,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run until stopped: in LASTRO_OPERATOR_NAMESPACE, or cluster-wide when unset.

    Standalone (no peering): the chart runs one replica with the Recreate strategy, so
    two operators never handle the same resource."""
    memo = memo if memo is not None else kopf.Memo()
    memo.config = config
    namespaces = [config.operator_namespace] if config.operator_namespace else []
    endpoint = f"http://0.0.0.0:{config.operator_health_port}/healthz" if liveness else None
    await kopf.operator(
        memo=memo,
        namespaces=namespaces,
        clusterwide=not namespaces,
        standalone=True,
        liveness_endpoint=endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


MISSING_CREDENTIALS = (
    "the operator needs LASTRO_OPERATOR_CLIENT_ID and LASTRO_OPERATOR_CLIENT_SECRET"
    " (a client_credentials client allowed audiences fraud and the services,"
    " scopes fraud:admin and privacy:admin)"
)


class DropKopfSettings(logging.Filter):
    """Kopf's per-object records carry its whole OperatorSettings as an extra: 2 KB of
    repr on every JSON log line. The object's kind, name, namespace and uid stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("settings", None)
        return True


def run(config: Settings) -> None:
    """`lastro serve operator`: refuse to start without credentials (ConfigError, exit 2)
    rather than retry a startup that cannot succeed; then run until SIGTERM."""
    if not (config.operator_client_id and config.operator_client_secret):
        raise ConfigError(MISSING_CREDENTIALS)
    for handler in logging.getLogger().handlers:
        handler.addFilter(DropKopfSettings())
    asyncio.run(operate(config))
