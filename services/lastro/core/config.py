"""Typed settings read once from ``LASTRO_*`` environment variables.

Every value has a development default that matches the local stack started by
``lastro dev up`` (ports from shared/DESIGN.md). A value that is present but
wrong (a port that is not a number, an unknown environment name) fails at start
with a :class:`ConfigError` naming the variable. Secrets that the dev stack
generates (database password, KMS token) are read from ``.dev/`` files when the
variable is not set, so a developer never copies them around by hand; outside
``dev``/``test`` they must be given explicitly.

The services' own settings (:class:`TransactionSettings`, :class:`FraudSettings`,
:class:`NotificationSettings`) are shaped in ``core/service_settings.py`` and read
here, with everything else; import them from either module.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lastro.core import registry
from lastro.core.service_settings import FraudSettings as FraudSettings
from lastro.core.service_settings import NotificationSettings as NotificationSettings
from lastro.core.service_settings import TransactionSettings as TransactionSettings

ENVIRONMENTS: Final = ("dev", "test", "prod")

SERVICE_PORTS: Final[dict[str, int]] = registry.default_ports()
INFRASTRUCTURE_PORTS: Final[dict[str, int]] = {
    "pg": 15432,
    "redis": 16379,
    "kafka": 19092,
    "kafka_controller": 19093,
    "kms": 8200,
    "smtp": 1025,
    "prometheus": 19090,
    "etcd": 12379,
    "etcd_peer": 12380,
    "kube_apiserver": 16443,
}


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message names it."""


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists():
            return parent
    return Path.cwd()


@dataclass(frozen=True)
class Settings:
    env: str
    dev_dir: Path
    host: str
    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    pg_database: str
    pg_ssl: bool
    redis_port: int
    kafka_port: int
    kafka_controller_port: int
    kms_port: int
    smtp_port: int
    prometheus_port: int
    etcd_port: int
    kube_apiserver_port: int
    vault_addr: str
    vault_token: str
    ca_file: Path
    jwt_issuer: str
    jwks_url: str
    events_key_name: str
    audit_key_name: str
    rate_limit_per_minute: int = 600
    auth_rate_limit_per_minute: int = 30
    otlp_endpoint: str | None = None
    # Where each process appends its spans as JSON lines (`lastro trace show`); the dev
    # stack sets it to .dev/traces, production exports over OTLP instead.
    traces_dir: Path | None = None
    # Seconds between two verifications of a service's audit chain (audit metrics).
    audit_verify_interval: int = 300
    log_level: str = "INFO"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    service_ports: Mapping[str, int] = field(default_factory=dict)
    transactions: TransactionSettings = field(default_factory=TransactionSettings)
    event_loop: str = "uvloop"
    # Young-generation threshold of the garbage collector in serving processes
    # (core/collector.py; CPython's own default is 700).
    gc_gen0_threshold: int = 10_000
    # Bind the service port with SO_REUSEPORT, so several processes of one service on a
    # host share it (the kernel spreads connections). Off by default: a second stack
    # started by mistake on the same ports must fail to bind, not split the traffic.
    reuse_port: bool = False
    partner_api_keys: Mapping[str, str] = field(default_factory=dict)
    acquirer_webhook_secret: str = ""
    acquirer_callback_url: str = ""
    service_urls: Mapping[str, str] = field(default_factory=dict)
    # In a cluster the dependencies are not on the loopback address services bind to.
    bind_host: str = ""
    redis_host: str = ""
    kafka_bootstrap_servers: str = ""
    # The Kubernetes part of the dev stack (`lastro dev up --k8s`) and its cached tools.
    etcd_peer_port: int = 12380
    tools_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "lastro" / "bin")
    # `lastro serve operator`: where it watches, who it is to the services, how long it waits.
    operator_namespace: str | None = None
    operator_client_id: str = ""
    operator_client_secret: str = ""
    # Data-subject requests: the KMS key that signs export bundles and erasure
    # certificates, and the accounts service's client for the privacy API fan-out.
    privacy_key_name: str = "lastro-privacy"
    privacy_client_id: str = ""
    privacy_client_secret: str = ""
    operator_ack_timeout: int = 30
    operator_health_port: int = 8080
    notifications: NotificationSettings = field(default_factory=NotificationSettings)
    fraud: FraudSettings = field(default_factory=FraudSettings)

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL for asyncpg (TLS is configured on the engine, not in the URL)."""
        return (
            f"postgresql+asyncpg://{self.pg_user}:{self.pg_password}"
            f"@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        )

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host or self.host}:{self.redis_port}/0"

    @property
    def kafka_bootstrap(self) -> str:
        """``LASTRO_KAFKA_BOOTSTRAP`` (``host:port[,host:port]``), else the local broker."""
        return self.kafka_bootstrap_servers or f"{self.host}:{self.kafka_port}"

    @property
    def listen_host(self) -> str:
        """The address services bind: ``LASTRO_BIND_HOST`` (0.0.0.0 in a pod), else host."""
        return self.bind_host or self.host

    def service_url(self, name: str) -> str:
        """``LASTRO_<NAME>_URL`` when set (in a cluster: ``https://<release>-<name>:<port>``),
        else the local stack's address."""
        return self.service_urls.get(name) or f"https://{self.host}:{self.service_ports[name]}"


def _get(env: Mapping[str, str], name: str, default: str | None) -> str:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"{name} is required but not set")
        return default
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(env, name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not 0 < value < 65536 and name.endswith("_PORT"):
        raise ConfigError(f"{name} must be a TCP port (1-65535), got {value}")
    return value


_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _identifier(env: Mapping[str, str], name: str, default: str) -> str:
    """A PostgreSQL identifier (role, database): lower-case letters, digits, underscore."""
    value = _get(env, name, default)
    if not _IDENTIFIER.fullmatch(value):
        raise ConfigError(f"{name} must be a lower-case SQL identifier, got {value!r}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _get(env, name, default).upper()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
    return value


def _not_negative(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 0:
        raise ConfigError(f"{name} must be zero or a positive integer, got {value}")
    return value


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{name} points at {value!r}, which is not a readable file")
    return path


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name, "true" if default else "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {raw!r}")


def _secret(
    env: Mapping[str, str], name: str, dev_file: Path, environment: str, required: bool = True
) -> str:
    """A secret from the variable, or in dev/test from the file the dev stack wrote."""
    value = env.get(name)
    if value:
        return value
    if environment in ("dev", "test") and dev_file.exists():
        return dev_file.read_text().strip()
    if environment in ("dev", "test") or not required:
        # The stack has not been started yet; commands that need the secret fail
        # later with a connection error that says so.
        return ""
    raise ConfigError(f"{name} is required outside dev/test")


def _amounts(env: Mapping[str, str], name: str, default: str) -> dict[str, int]:
    """``EUR=100000,USD=100000``: minor units per ISO 4217 code."""
    raw = _get(env, name, default)
    amounts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        code, sep, value = item.partition("=")
        if not (sep and re.fullmatch(r"[A-Z]{3}", code) and value.isdigit()):
            raise ConfigError(f"{name} must read like EUR=100000,USD=50000, got {raw!r}")
        amounts[code] = int(value)
    return amounts


def _transaction_settings(
    env: Mapping[str, str], environment: str, secrets_dir: Path, url: Callable[[str], str]
) -> TransactionSettings:
    prefix = "LASTRO_TRANSACTIONS_"
    # Only the transaction service needs its client: optional for every other process.
    client = _secret(
        env, f"{prefix}CLIENT", secrets_dir / "transactions_client", environment, required=False
    )
    client_id, _, client_secret = client.partition(":")
    policy = _get(env, f"{prefix}REVIEW_EXPIRY_POLICY", "void")
    if policy not in ("void", "post"):
        raise ConfigError(f"{prefix}REVIEW_EXPIRY_POLICY must be void or post, got {policy!r}")
    return TransactionSettings(
        schema=_identifier(env, f"{prefix}SCHEMA", "transactions"),
        worker_group=_get(env, f"{prefix}WORKER_GROUP", "transactions-worker"),
        client_id=client_id,
        client_secret=client_secret,
        fraud_url=_get(env, f"{prefix}FRAUD_URL", url("fraud")),
        fraud_timeout_ms=_positive(env, f"{prefix}FRAUD_TIMEOUT_MS", 300),
        fraud_concurrency=_positive(env, f"{prefix}FRAUD_CONCURRENCY", 16),
        fraud_breaker_reset_seconds=_positive(env, f"{prefix}FRAUD_BREAKER_RESET", 2),
        fraud_fallback_after_ms=_not_negative(env, f"{prefix}FRAUD_FALLBACK_AFTER_MS", 5000),
        fraud_fallback_limits=_amounts(
            env, f"{prefix}FRAUD_FALLBACK_LIMITS", "EUR=50000,USD=50000,GBP=50000"
        ),
        fraud_fallback_limits_sca=_amounts(
            env, f"{prefix}FRAUD_FALLBACK_LIMITS_SCA", "EUR=500000,USD=500000,GBP=500000"
        ),
        step_up_thresholds=_amounts(
            env, f"{prefix}STEP_UP_THRESHOLDS", "EUR=100000,USD=100000,GBP=100000,CHF=100000"
        ),
        step_up_max_age=_positive(env, f"{prefix}STEP_UP_MAX_AGE", 300),
        fx_url=_get(env, "LASTRO_FX_URL", url("fx")),
        fx_spread_bps=_positive(env, f"{prefix}FX_SPREAD_BPS", 50),
        fx_quote_ttl=_positive(env, f"{prefix}FX_QUOTE_TTL", 60),
        fx_rate_ttl=_positive(env, f"{prefix}FX_RATE_TTL", 5),
        fx_max_staleness=_positive(env, f"{prefix}FX_MAX_STALENESS", 300),
        acquirer_url=_get(env, "LASTRO_ACQUIRER_URL", url("acquirer")),
        acquirer_timeout_ms=_positive(env, f"{prefix}ACQUIRER_TIMEOUT_MS", 2000),
        breaker_fail_max=_positive(env, f"{prefix}BREAKER_FAIL_MAX", 5),
        breaker_reset_seconds=_positive(env, f"{prefix}BREAKER_RESET", 15),
        review_timeout=_positive(env, f"{prefix}REVIEW_TIMEOUT", 72 * 3600),
        review_expiry_policy=policy,
        challenge_timeout=_positive(env, f"{prefix}CHALLENGE_TIMEOUT", 900),
        max_wait=_positive(env, f"{prefix}MAX_WAIT", 30),
        stuck_after=_positive(env, f"{prefix}STUCK_AFTER", 30),
    )


def _fraud_settings(env: Mapping[str, str], environment: str, secrets_dir: Path) -> FraudSettings:
    # Optional here: only the fraud processes need it, and they refuse to start
    # without it outside dev/test (other services never read it).
    client = env.get("LASTRO_FRAUD_CLIENT") or ""
    dev_file = secrets_dir / "fraud_client"
    if not client and environment in ("dev", "test") and dev_file.exists():
        client = dev_file.read_text().strip()
    client_id, _, client_secret = client.partition(":")
    return FraudSettings(
        client_id=client_id,
        client_secret=client_secret,
        seed_rules=_bool(env, "LASTRO_FRAUD_SEED_RULES", environment == "dev"),
        profile_ttl_days=_positive(env, "LASTRO_FRAUD_PROFILE_TTL_DAYS", 180),
        rule_wait_ms=_positive(env, "LASTRO_FRAUD_RULE_WAIT_MS", 5000),
        record_budget_ms=_positive(env, "LASTRO_FRAUD_RECORD_BUDGET_MS", 250),
    )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < 10**7:
        raise ConfigError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _networks(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    raw = env.get(name, default)
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{name} must list CIDR networks, got {item!r}") from None
    return tuple(networks)


def _notification_settings(env: Mapping[str, str], environment: str) -> NotificationSettings:
    prefix = "LASTRO_NOTIFICATIONS_"
    return NotificationSettings(
        retry_base_seconds=_seconds(env, f"{prefix}RETRY_BASE_SECONDS", 30.0),
        retry_cap_seconds=_seconds(env, f"{prefix}RETRY_CAP_SECONDS", 14_400.0),
        max_attempts=_positive(env, f"{prefix}MAX_ATTEMPTS", 10),
        disable_after_failures=_positive(env, f"{prefix}DISABLE_AFTER_FAILURES", 30),
        webhook_timeout_seconds=_seconds(env, f"{prefix}WEBHOOK_TIMEOUT_SECONDS", 10.0),
        channel_timeout_seconds=_seconds(env, f"{prefix}CHANNEL_TIMEOUT_SECONDS", 10.0),
        lease_seconds=_seconds(env, f"{prefix}LEASE_SECONDS", 60.0),
        poll_seconds=_seconds(env, f"{prefix}POLL_SECONDS", 1.0),
        max_event_age_seconds=_seconds(env, f"{prefix}MAX_EVENT_AGE_SECONDS", 86_400.0),
        webhook_allow_cidrs=_networks(
            env,
            f"{prefix}WEBHOOK_ALLOW_CIDRS",
            "127.0.0.0/8,::1/128" if environment == "dev" else "",
        ),
        mail_from=_get(env, f"{prefix}MAIL_FROM", "Lastro <no-reply@lastro.dev>"),
        smtp_host=env.get("LASTRO_SMTP_HOST", ""),
        client_id=env.get(f"{prefix}CLIENT_ID") or None,
        client_secret=env.get(f"{prefix}CLIENT_SECRET") or None,
    )


def load_settings(env: Mapping[str, str] | None = None, *, data_plane: bool = True) -> Settings:
    """Read and validate every ``LASTRO_*`` variable; raises ConfigError naming the bad one.

    ``data_plane=False`` is for processes that hold no data (the operator): they are
    not given the database password or the Vault token, so those are not required."""
    env = os.environ if env is None else env
    environment = _get(env, "LASTRO_ENV", "dev")
    if environment not in ENVIRONMENTS:
        raise ConfigError(
            f"LASTRO_ENV must be one of {', '.join(ENVIRONMENTS)}, got {environment!r}"
        )
    dev_dir = Path(_get(env, "LASTRO_DEV_DIR", str(_repo_root() / ".dev"))).resolve()
    host = _get(env, "LASTRO_HOST", "127.0.0.1")
    # Shifts every default port, so a second stack runs beside the first.
    offset = _int(env, "LASTRO_PORT_OFFSET", 0)
    if not 0 <= offset < 40000:
        raise ConfigError(f"LASTRO_PORT_OFFSET must be between 0 and 39999, got {offset}")
    ports = {
        name: _int(env, f"{registry.service(name).env_prefix}_PORT", default + offset)
        for name, default in SERVICE_PORTS.items()
    }
    infra = {
        name: _int(env, f"LASTRO_{name.upper()}_PORT", default + offset)
        for name, default in INFRASTRUCTURE_PORTS.items()
    }
    kms_port = infra["kms"]
    secrets_dir = dev_dir / "secrets"
    partner_api_keys = {
        # Only the service that calls a third party needs its credential.
        spec.name: _secret(
            env,
            f"{spec.env_prefix}_API_KEY",
            secrets_dir / f"{spec.name}_api_key",
            environment,
            required=False,
        )
        for spec in registry.SERVICES
        if spec.kind == "external"
    }
    return Settings(
        env=environment,
        dev_dir=dev_dir,
        host=host,
        pg_host=_get(env, "LASTRO_PG_HOST", host),
        pg_port=infra["pg"],
        pg_user=_identifier(env, "LASTRO_PG_USER", "lastro"),
        pg_password=_secret(
            env, "LASTRO_PG_PASSWORD", secrets_dir / "pg_password", environment, data_plane
        ),
        pg_database=_identifier(env, "LASTRO_PG_DATABASE", "lastro"),
        pg_ssl=_bool(env, "LASTRO_PG_SSL", True),
        redis_port=infra["redis"],
        kafka_port=infra["kafka"],
        kafka_controller_port=infra["kafka_controller"],
        kms_port=kms_port,
        smtp_port=infra["smtp"],
        prometheus_port=infra["prometheus"],
        etcd_port=infra["etcd"],
        kube_apiserver_port=infra["kube_apiserver"],
        vault_addr=_get(env, "LASTRO_VAULT_ADDR", f"https://{host}:{kms_port}"),
        vault_token=_secret(
            env, "LASTRO_VAULT_TOKEN", secrets_dir / "kms_root_token", environment, data_plane
        ),
        ca_file=Path(_get(env, "LASTRO_CA_FILE", str(dev_dir / "ca" / "ca.pem"))),
        jwt_issuer=_get(env, "LASTRO_JWT_ISSUER", f"https://{host}:{ports['identity']}"),
        jwks_url=_get(
            env, "LASTRO_JWKS_URL", f"https://{host}:{ports['identity']}/.well-known/jwks.json"
        ),
        events_key_name=_get(env, "LASTRO_EVENTS_KEY_NAME", "lastro-events"),
        audit_key_name=_get(env, "LASTRO_AUDIT_KEY_NAME", "lastro-audit"),
        rate_limit_per_minute=_positive(env, "LASTRO_RATE_LIMIT_PER_MINUTE", 600),
        auth_rate_limit_per_minute=_positive(env, "LASTRO_AUTH_RATE_LIMIT_PER_MINUTE", 30),
        otlp_endpoint=env.get("LASTRO_OTLP_ENDPOINT") or None,
        traces_dir=Path(env["LASTRO_TRACES_DIR"]) if env.get("LASTRO_TRACES_DIR") else None,
        audit_verify_interval=_positive(env, "LASTRO_AUDIT_VERIFY_INTERVAL_SECONDS", 300),
        log_level=_choice(env, "LASTRO_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        tls_cert_file=_optional_path(env, "LASTRO_TLS_CERT_FILE"),
        tls_key_file=_optional_path(env, "LASTRO_TLS_KEY_FILE"),
        service_ports=ports,
        event_loop=_choice(env, "LASTRO_EVENT_LOOP", "uvloop", ("UVLOOP", "ASYNCIO")).lower(),
        reuse_port=_bool(env, "LASTRO_REUSE_PORT", False),
        gc_gen0_threshold=_positive(env, "LASTRO_GC_GEN0_THRESHOLD", 10_000),
        transactions=_transaction_settings(
            env, environment, secrets_dir, lambda name: f"https://{host}:{ports[name]}"
        ),
        partner_api_keys=partner_api_keys,
        acquirer_webhook_secret=_secret(
            env,
            "LASTRO_ACQUIRER_WEBHOOK_SECRET",
            secrets_dir / "acquirer_webhook_secret",
            environment,
            required=False,
        ),
        acquirer_callback_url=_get(
            env,
            "LASTRO_ACQUIRER_CALLBACK_URL",
            f"https://{host}:{ports['transactions']}/internal/v1/acquirer/settlements",
        ),
        service_urls={
            name: url.rstrip("/")
            for name in SERVICE_PORTS
            if (url := env.get(f"{registry.service(name).env_prefix}_URL"))
        },
        bind_host=env.get("LASTRO_BIND_HOST", ""),
        redis_host=env.get("LASTRO_REDIS_HOST", ""),
        kafka_bootstrap_servers=env.get("LASTRO_KAFKA_BOOTSTRAP", ""),
        etcd_peer_port=infra["etcd_peer"],
        tools_dir=Path(
            _get(env, "LASTRO_TOOLS_DIR", str(Path.home() / ".cache" / "lastro" / "bin"))
        ),
        operator_namespace=env.get("LASTRO_OPERATOR_NAMESPACE") or None,
        privacy_key_name=_get(env, "LASTRO_PRIVACY_KEY_NAME", "lastro-privacy"),
        privacy_client_id=env.get("LASTRO_PRIVACY_CLIENT_ID", ""),
        privacy_client_secret=env.get("LASTRO_PRIVACY_CLIENT_SECRET", ""),
        operator_client_id=env.get("LASTRO_OPERATOR_CLIENT_ID", ""),
        operator_client_secret=env.get("LASTRO_OPERATOR_CLIENT_SECRET", ""),
        operator_ack_timeout=_positive(env, "LASTRO_OPERATOR_ACK_TIMEOUT", 30),
        operator_health_port=_int(env, "LASTRO_OPERATOR_HEALTH_PORT", 8080),
        notifications=_notification_settings(env, environment),
        fraud=_fraud_settings(env, environment, secrets_dir),
    )
