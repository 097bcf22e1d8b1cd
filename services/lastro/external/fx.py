"""The simulated FX rate provider: `lastro serve fx` (port 7101).

``GET /v1/rates?base=EUR&quote=USD`` answers one pair, ``GET /v1/rates`` every pair
(or those of one ``base`` or ``quote``). Rates are decimal strings with six
significant digits, never floats, stamped with ``as_of``, the start of the tick they
belong to.

Each currency's price in EUR follows its own mean-reverting random walk
(:class:`RateWalk`): every tick it moves by a random non-zero step of up to
:data:`STEP_PPM` parts per million and is pulled back towards its mid-market rate,
so rates move all the time but stay realistic. A pair's rate is the ratio of its two
currencies' prices, so rates are consistent across pairs (EUR→USD→GBP ≈ EUR→GBP).
The walk is seeded, so a given seed yields the same rates at the same tick.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from lastro.core.config import Settings
from lastro.core.http import PARAMS_KEY, json_response
from lastro.external.provider import create_provider_app

NAME: Final = "fx"
OPENAPI: Final = Path(__file__).with_name("fx.openapi.yaml")
DEFAULT_SEED: Final = 7101
TICK_SECONDS: Final = 1.0
STEP_PPM: Final = 300
REVERSION: Final = Decimal("0.02")
SIGNIFICANT_DIGITS: Final = 6
MAX_CATCH_UP_TICKS: Final = 10_000
ANCHOR: Final = "EUR"

MID_RATES: Final[Mapping[str, Decimal]] = {
    code: Decimal(rate)
    for code, rate in {
        "EUR": "1",
        "USD": "1.1650",
        "GBP": "0.8710",
        "CHF": "0.9360",
        "JPY": "172.40",
        "BRL": "6.3200",
        "CAD": "1.6080",
        "AUD": "1.7750",
        "SEK": "11.040",
        "PLN": "4.2650",
    }.items()
}
"""Units of each currency per euro, mid-market: where each walk is pulled back to."""


def significant(value: Decimal, digits: int = SIGNIFICANT_DIGITS) -> Decimal:
    """``value`` rounded half-even to ``digits`` significant digits."""
    exponent = value.adjusted() - (digits - 1)
    return value.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_EVEN)


def rate_text(value: Decimal) -> str:
    """A rate as the API writes it: plain notation, never an exponent."""
    return format(value, "f")


class RateWalk:
    """Every currency's price in EUR, walking one step per :meth:`step` (module docstring).

    Deterministic: the same seed and the same number of steps give the same prices.
    """

    def __init__(self, seed: int, mids: Mapping[str, Decimal] = MID_RATES) -> None:
        if mids.get(ANCHOR) != Decimal(1):
            raise ValueError(f"mid rates are per {ANCHOR}, so {ANCHOR} must be 1")
        self._rng = random.Random(seed)
        self._mids = dict(mids)
        self._prices = dict(mids)
        self.steps = 0

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(sorted(self._mids))

    def step(self) -> None:
        """Move every price but the anchor's by a non-zero random step, then pull it
        back towards its mid by :data:`REVERSION` of the distance."""
        for code in self.currencies:
            if code == ANCHOR:
                continue
            shock = self._rng.choice((-1, 1)) * self._rng.randint(1, STEP_PPM)
            price = self._prices[code] * (1 + Decimal(shock) / 1_000_000)
            price += (self._mids[code] - price) * REVERSION
            self._prices[code] = significant(price, 12)
        self.steps += 1

    def advance(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def price(self, code: str) -> Decimal:
        """Units of ``code`` per euro now; KeyError for a currency not quoted."""
        return self._prices[code]

    def rate(self, base: str, quote: str) -> Decimal:
        """Units of ``quote`` per unit of ``base``, to six significant digits."""
        if base == quote:
            return Decimal(1)
        return significant(self._prices[quote] / self._prices[base])


class RateBook:
    """The walk tied to wall-clock ticks: reading catches it up to the current tick."""

    def __init__(self, walk: RateWalk, clock: Callable[[], float] = time.time) -> None:
        self._walk = walk
        self._clock = clock
        self._tick = self._current_tick()

    def _current_tick(self) -> int:
        return int(self._clock() // TICK_SECONDS)

    def now(self) -> tuple[RateWalk, str]:
        """The walk at the current tick and that tick's start, RFC 3339."""
        tick = self._current_tick()
        if tick > self._tick:
            self._walk.advance(min(tick - self._tick, MAX_CATCH_UP_TICKS))
            self._tick = tick
        as_of = datetime.fromtimestamp(self._tick * TICK_SECONDS, UTC)
        return self._walk, as_of.isoformat().replace("+00:00", "Z")


RATES_KEY: Final = web.AppKey("rates", RateBook)


def _quote(walk: RateWalk, base: str, quote: str, as_of: str) -> dict[str, Any]:
    return {"base": base, "quote": quote, "rate": rate_text(walk.rate(base, quote)), "as_of": as_of}


async def get_rates(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    base, quote = params.get("base"), params.get("quote")
    walk, as_of = request.app[RATES_KEY].now()
    if base is not None and quote is not None:
        return json_response(_quote(walk, base, quote, as_of))
    pairs = [
        (b, q)
        for b, q in itertools.permutations(walk.currencies, 2)
        if base in (None, b) and quote in (None, q)
    ]
    return json_response({"as_of": as_of, "rates": [_quote(walk, b, q, as_of) for b, q in pairs]})


async def create_app(
    settings: Settings, *, seed: int = DEFAULT_SEED, clock: Callable[[], float] = time.time
) -> web.Application:
    """The FX provider (module docstring); tests may pass their own seed and clock."""
    app = create_provider_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=[web.get("/v1/rates", get_rates)],
    )
    app[RATES_KEY] = RateBook(RateWalk(seed), clock)
    return app
