"""FX rates from the rate provider, cached in Redis, served stale through an outage.

:meth:`FxRates.rate` answers, in order of preference:

1. the cached rate while it is younger than ``fresh`` seconds;
2. a fresh rate from the provider (timeout + breaker + retries), which is cached
   with a Redis TTL of ``max_staleness`` seconds;
3. when the provider cannot answer: the cached rate if it is younger than
   ``max_staleness`` (marked ``stale``);
4. otherwise :class:`~lastro.core.errors.DependencyUnavailable` (503 problem+json
   with ``Retry-After``): a rate older than that is never used to price money.

Redis being down only loses the cache (logged): the provider is asked directly.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from lastro.core.errors import DependencyUnavailable
from lastro.core.observability import metrics_registry
from lastro.transactions.clients.http import TRANSPORT_ERRORS, Endpoint
from lastro.transactions.domain.errors import UnsupportedCurrencyPair
from lastro.transactions.domain.fx import parse_rate

log = logging.getLogger(__name__)

RATES_SERVED: Final = Counter(
    "lastro_fx_rates_served",
    "FX rates used for quotes, by freshness: cached, fetched, stale (provider down).",
    ["freshness"],
    registry=metrics_registry(),
)


@dataclass(frozen=True)
class Rate:
    rate: Decimal
    as_of: datetime
    stale: bool = False


class FxRates:
    def __init__(
        self,
        endpoint: Endpoint,
        redis: Redis,
        *,
        fresh: float,
        max_staleness: float,
        prefix: str = "lastro:fx",
    ) -> None:
        self._endpoint = endpoint
        self._redis = redis
        self._fresh = fresh
        self._max_staleness = max_staleness
        self._prefix = prefix

    def _key(self, base: str, quote: str) -> str:
        return f"{self._prefix}:{base}:{quote}"

    async def _cached(self, key: str) -> tuple[Rate, float] | None:
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError) as error:
            log.warning("fx rate cache unavailable: %s", error)
            return None
        if raw is None:
            return None
        data = json.loads(raw)
        rate = Rate(parse_rate(data["rate"]), datetime.fromisoformat(data["as_of"]))
        return rate, float(data["fetched_at"])

    async def _store(self, key: str, rate: Rate, fetched_at: float) -> None:
        data = {"rate": str(rate.rate), "as_of": rate.as_of.isoformat(), "fetched_at": fetched_at}
        try:
            await self._redis.set(key, json.dumps(data), ex=max(1, int(self._max_staleness)))
        except (RedisError, OSError) as error:
            log.warning("fx rate cache unavailable: %s", error)

    async def rate(self, base: str, quote: str) -> Rate:
        """The provider's rate for selling ``base`` for ``quote`` (see module docstring)."""
        key = self._key(base, quote)
        cached = await self._cached(key)
        now = time.time()
        if cached is not None and now - cached[1] <= self._fresh:
            RATES_SERVED.labels("cached").inc()
            return cached[0]
        try:
            answer = await self._endpoint.request(
                "GET", "/v1/rates", params={"base": base, "quote": quote}, idempotent=True
            )
        except TRANSPORT_ERRORS as error:
            if cached is not None and now - cached[1] <= self._max_staleness:
                RATES_SERVED.labels("stale").inc()
                log.warning(
                    "fx provider unavailable (%s); serving a stale %s/%s", error, base, quote
                )
                return Rate(cached[0].rate, cached[0].as_of, stale=True)
            raise DependencyUnavailable(
                f"no {base}/{quote} rate younger than {int(self._max_staleness)} s is available; "
                "the FX provider cannot be reached",
                retry_after=5,
            ) from None
        if answer.status in (400, 404, 422):
            raise UnsupportedCurrencyPair(
                f"{base}/{quote} is not offered by the rate provider", field="buy_currency"
            )
        if not answer.ok or not isinstance(answer.body, dict):
            raise DependencyUnavailable(f"the FX provider answered {answer.status}")
        rate = Rate(
            parse_rate(str(answer.body["rate"])),
            _time(answer.body.get("as_of")),
        )
        await self._store(key, rate, now)
        RATES_SERVED.labels("fetched").inc()
        return rate


def _time(text: object) -> datetime:
    if isinstance(text, str):
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)
