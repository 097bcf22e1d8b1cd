"""The settings of one service each, as :func:`lastro.core.config.load_settings` reads
them into :class:`~lastro.core.config.Settings` (``settings.transactions``,
``settings.fraud``, ``settings.notifications``). Only their shapes and defaults live
here; every variable is read, and refused when malformed, in ``core/config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TransactionSettings:
    """The transaction service's own settings (``LASTRO_TRANSACTIONS_*``; the
    simulated third parties' ``LASTRO_FX_*`` and ``LASTRO_ACQUIRER_*``).

    Amount limits are minor units per ISO 4217 code. ``step_up_thresholds``: the
    largest amount moved without a recent second factor (a currency missing here
    always needs one). ``fraud_fallback_limits``: the largest amount approved
    without a screening answer when the fraud service is unavailable (above it,
    or in a currency missing here, the transaction fails with
    ``screening_unavailable``); ``fraud_fallback_limits_sca`` the same for a request
    made with strong customer authentication (a recent second factor).
    ``fraud_fallback_after_ms``: how long a transaction keeps asking the fraud
    service again (backing off) before the fallback applies, so a busy second or a
    restart is not an unscreened approval; 0 applies it at the first miss. Durations
    are seconds unless named ``_ms``.
    """

    schema: str = "transactions"
    worker_group: str = "transactions-worker"
    client_id: str = ""
    client_secret: str = ""
    fraud_url: str = ""
    fraud_timeout_ms: int = 300
    fraud_concurrency: int = 16
    fraud_breaker_reset_seconds: int = 2
    fraud_fallback_after_ms: int = 5000
    fraud_fallback_limits: Mapping[str, int] = field(default_factory=dict)
    fraud_fallback_limits_sca: Mapping[str, int] = field(default_factory=dict)
    step_up_thresholds: Mapping[str, int] = field(default_factory=dict)
    step_up_max_age: int = 300
    fx_url: str = ""
    fx_spread_bps: int = 50
    fx_quote_ttl: int = 60
    fx_rate_ttl: int = 5
    fx_max_staleness: int = 300
    acquirer_url: str = ""
    acquirer_timeout_ms: int = 2000
    breaker_fail_max: int = 5
    breaker_reset_seconds: int = 15
    review_timeout: int = 72 * 3600
    review_expiry_policy: str = "void"
    challenge_timeout: int = 900
    max_wait: int = 30
    stuck_after: int = 30


@dataclass(frozen=True)
class FraudSettings:
    """The fraud service's own settings (``LASTRO_FRAUD_*``).

    ``client_id``/``client_secret``: its OAuth client (``LASTRO_FRAUD_CLIENT`` as
    ``id:secret``; on the local stack registered once and kept in
    ``.dev/secrets/fraud_client``), used to freeze accounts and report review
    outcomes. ``seed_rules``: load ``policies/fraudrules`` at start when the rules
    topic is empty (default on in dev). ``profile_ttl_days``: a profile nobody
    updated for that long expires from Redis. ``rule_wait_ms``: how long a rules
    admin call waits for its change to be live before answering 202.
    ``record_budget_ms``: how long a screening may take to record its decision before
    it answers 503 instead (inside the transaction service's 300 ms budget).
    """

    client_id: str = ""
    client_secret: str = ""
    seed_rules: bool = False
    profile_ttl_days: int = 180
    rule_wait_ms: int = 5000
    record_budget_ms: int = 250


@dataclass(frozen=True)
class NotificationSettings:
    """Delivery knobs of the notification service (``LASTRO_NOTIFICATIONS_*``).

    Retries wait ``uniform(ceiling / 2, ceiling)`` with ``ceiling = min(cap, base *
    2**n)`` before retry ``n``; after ``max_attempts`` a delivery goes to the
    dead-letter queue. A webhook endpoint is disabled after ``disable_after_failures``
    failed attempts in a row. ``webhook_allow_cidrs`` are the only private, loopback or
    link-local networks a webhook may target (development receivers); by default
    loopback in ``dev`` and nothing elsewhere. ``smtp_host`` (``LASTRO_SMTP_HOST``) is the
    mail relay, the stack's host when empty; its port is ``Settings.smtp_port``.
    """

    retry_base_seconds: float = 30.0
    retry_cap_seconds: float = 14_400.0
    max_attempts: int = 10
    disable_after_failures: int = 30
    webhook_timeout_seconds: float = 10.0
    channel_timeout_seconds: float = 10.0
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    max_event_age_seconds: float = 86_400.0
    webhook_allow_cidrs: tuple[str, ...] = ()
    mail_from: str = "Lastro <no-reply@lastro.dev>"
    smtp_host: str = ""
    client_id: str | None = None
    client_secret: str | None = None
