"""The simulated bank: where people live and travel, the scenario, the labelled
transaction, the persona, and :class:`World`, the building blocks every behaviour
uses (seeded randomness, paying, amounts, times). No I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from lastro.fraud.domain.detectors import Typology
from lastro.fraud.domain.transactions import Location, Transaction, TransactionType

START: Final = datetime(2026, 1, 5, tzinfo=UTC)
CURRENCY: Final = "EUR"

HOMES: Final = (
    ("PT", 38.72, -9.14),
    ("PT", 41.15, -8.61),
    ("ES", 40.42, -3.70),
    ("ES", 41.39, 2.17),
    ("FR", 48.86, 2.35),
    ("FR", 45.76, 4.84),
    ("DE", 52.52, 13.40),
    ("DE", 48.14, 11.58),
    ("NL", 52.37, 4.90),
    ("IT", 41.90, 12.50),
    ("IT", 45.46, 9.19),
    ("IE", 53.35, -6.26),
    ("AT", 48.21, 16.37),
    ("BE", 50.85, 4.35),
    ("PL", 52.23, 21.01),
    ("CZ", 50.08, 14.44),
)
ABROAD: Final = (
    ("GB", 51.51, -0.13),
    ("US", 40.71, -74.01),
    ("TH", 13.76, 100.50),
    ("MX", 21.16, -86.85),
    ("MA", 31.63, -7.99),
    ("TR", 41.01, 28.98),
    ("GR", 37.98, 23.73),
    ("IS", 64.15, -21.94),
    ("HR", 43.51, 16.44),
    ("JP", 35.68, 139.69),
    ("BR", -22.91, -43.17),
    ("AE", 25.20, 55.27),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """The size of a simulation."""

    customers: int = 400
    shops: int = 12
    days: int = 70
    warmup_days: int = 35
    cases_per_typology: int = 40

    def __post_init__(self) -> None:
        if self.customers < 10 or self.shops < 3 or self.cases_per_typology < 0:
            raise ValueError("a scenario needs at least 10 customers and 3 shops")
        if self.days < self.warmup_days + 14:
            raise ValueError("a scenario needs at least 14 days after its warm-up")


DEFAULT_SCENARIO: Final = Scenario()


@dataclass(frozen=True, slots=True)
class Labelled:
    """A generated transaction and what it really is."""

    txn: Transaction
    case_id: str | None = None
    typology: Typology | None = None
    lookalike: str | None = None

    @property
    def is_fraud(self) -> bool:
        return self.case_id is not None


@dataclass
class Persona:
    """One simulated customer and their habits."""

    id: str
    account: str
    home: tuple[str, float, float]
    devices: list[str]
    ips: list[str]
    median: int
    sigma: float
    rate: float
    merchants: list[str]
    friends: list[str] = field(default_factory=list)
    shops: list[str] = field(default_factory=list)
    landlord: str = ""
    rent: int = 0
    bills: list[tuple[str, int]] = field(default_factory=list)
    payday: int = 25
    employer: str = ""
    salary: int = 0
    burst_payer: bool = False
    is_shop: bool = False
    supplier: str = ""
    switch_at: datetime | None = None
    new_ip: str | None = None

    def device_at(self, at: datetime) -> str:
        """The phone in use at ``at`` (a new one after a switch)."""
        switched = self.switch_at is not None and at >= self.switch_at
        return self.devices[-1] if switched else self.devices[0]

    def ips_at(self, at: datetime) -> list[str]:
        """The networks in use at ``at``; the newest last."""
        switched = self.switch_at is not None and at >= self.switch_at and self.new_ip
        return [*self.ips, self.new_ip] if switched and self.new_ip else self.ips


class World:
    """The people, shops and merchants of one seed and scenario, and the stream built so far."""

    def __init__(self, seed: int, scenario: Scenario) -> None:
        self.rng = random.Random(seed)
        self.side = random.Random(f"{seed}:side")
        """A second stream for behaviour added later (collections, mule accounts reused
        by several scam victims), so adding it leaves the rest of a seed's traffic as it was."""
        self.scenario = scenario
        self.out: list[Labelled] = []
        self.seq = 0
        self.merchants = [f"mer_{i:04d}" for i in range(600)]
        self.merchant_weights = [1 / (i + 1) ** 0.8 for i in range(600)]
        self.people = [self._persona(i) for i in range(scenario.customers)]
        self.shops = [self._shop(i) for i in range(scenario.shops)]
        ids = [p.id for p in self.people]
        for person in self.people:
            person.friends = self.rng.sample([i for i in ids if i != person.id], 4)
            person.shops = self.rng.sample([s.id for s in self.shops], 3)
        self.by_id = {p.id: p for p in [*self.people, *self.shops]}
        self.shop_ids = {s.id for s in self.shops}
        self.away: dict[str, set[int]] = {}
        self.actors: list[Persona] = []
        self.cases = 0
        self.takings: dict[tuple[str, int], int] = {}

    # --- building blocks ------------------------------------------------------------

    def _persona(self, index: int) -> Persona:
        rng = self.rng
        median = int(math.exp(rng.uniform(math.log(1500), math.log(8000))))
        return Persona(
            id=f"cus_{index:05d}",
            account=f"acc_{index:05d}",
            home=rng.choice(HOMES),
            devices=[f"dev_{index:05d}_0"],
            ips=[f"10.{index // 250}.{index % 250}.{n}" for n in range(rng.randint(1, 2))],
            median=median,
            sigma=rng.uniform(0.5, 0.9),
            rate=rng.uniform(0.6, 3.0),
            merchants=rng.choices(self.merchants, self.merchant_weights, k=rng.randint(12, 30)),
            landlord=f"iban_landlord_{index:05d}",
            rent=rng.randint(45_000, 160_000),
            bills=[
                (f"iban_utility_{u}", rng.randint(3_000, 15_000)) for u in rng.sample(range(30), 3)
            ],
            payday=rng.choice((1, 25, 28)),
            employer=f"iban_employer_{rng.randrange(80)}",
            salary=rng.randint(120_000, 600_000),
            burst_payer=rng.random() < 0.4,
        )

    def _shop(self, index: int) -> Persona:
        shop = self._persona(10_000 + index)
        shop.is_shop = True
        shop.supplier = f"iban_supplier_{index}"
        return shop

    def _emit(self, label: Labelled) -> None:
        self.out.append(label)
        txn = label.txn
        if txn.counterparty_customer_id in self.shop_ids:
            day = (txn.occurred_at - START).days
            key = (txn.counterparty_customer_id, day)
            self.takings[key] = self.takings.get(key, 0) + txn.amount

    def _pay(
        self,
        person: Persona,
        at: datetime,
        kind: TransactionType,
        amount: int,
        counterparty: str | None,
        *,
        to: Persona | None = None,
        device: str | None = None,
        ip: str | None = None,
        place: tuple[str, float, float] | None = None,
        located: bool = True,
        lookalike: str | None = None,
        case: str | None = None,
        typology: Typology | None = None,
    ) -> None:
        """Record one transaction by ``person`` (to ``to``, an internal customer, if given)."""
        self.seq += 1
        country, lat, lon = place or person.home
        jitter = 0.08
        txn = Transaction(
            transaction_id=f"txn_{self.seq:07d}",
            type=kind,
            amount=max(1, amount),
            currency=CURRENCY,
            customer_id=person.id,
            source_account_id=person.account,
            occurred_at=at,
            destination_account_id=to.account if to else None,
            counterparty=to.account if to else counterparty,
            counterparty_customer_id=to.id if to else None,
            device_id=device,
            ip=ip,
            country=country,
            location=Location(
                lat + self.rng.uniform(-jitter, jitter), lon + self.rng.uniform(-jitter, jitter)
            )
            if located
            else None,
        )
        self._emit(Labelled(txn, case, typology, lookalike))

    def _amount(self, person: Persona, scale: float = 1.0) -> int:
        return int(person.median * scale * math.exp(self.rng.gauss(0, person.sigma)))

    def _day_time(self, day: int, start: int = 7, end: int = 23) -> datetime:
        return START + timedelta(days=day, seconds=self.rng.randint(start * 3600, end * 3600))

    def _poisson(self, lam: float) -> int:
        threshold, k, product = math.exp(-lam), 0, self.rng.random()
        while product > threshold:
            k += 1
            product *= self.rng.random()
        return k
