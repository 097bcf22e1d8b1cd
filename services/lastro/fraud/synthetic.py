"""Seeded synthetic traffic for the evaluation harness: customers, look-alikes, fraud.

:func:`generate` simulates ``days`` of a retail bank's transactions for
``customers`` people and a few shops, deterministic for a seed. Legitimate
behaviour includes the look-alikes that make fraud detection hard:

- payday bursts: salary in, then rent and bills paid within minutes;
- holidays abroad: a flight (at airliner speed) to another country, a new IP;
- a new phone: a new device (and often a new IP) paying the usual payees;
- rent in one large amount to the known landlord, a deposit to a new landlord;
- big one-off purchases, two near-threshold payments for a car, a family loan
  repaid within days;
- shops: many customers paying them every day, a large weekly supplier payment.

Into the evaluation window (after ``warmup_days``) it injects
``cases_per_typology`` cases of every :class:`Typology`, each a set of
transactions labelled with a case id. Everything is EUR. No I/O.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from lastro.fraud.domain.detectors import Typology
from lastro.fraud.domain.features import haversine_km
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


class Simulation:
    """Builds the labelled transaction stream for one seed and scenario."""

    def __init__(self, seed: int, scenario: Scenario) -> None:
        self.rng = random.Random(seed)
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

    # --- legitimate behaviour -------------------------------------------------------

    def everyday(self, person: Persona, at: datetime) -> None:
        """One ordinary payment: a card at a usual shop, online, or a transfer to a friend."""
        rng = self.rng
        roll = rng.random()
        device, ip = person.device_at(at), rng.choice(person.ips_at(at))
        if roll < 0.12 and person.friends:
            to = self.by_id[rng.choice(person.friends)]
            self._pay(
                person,
                at,
                TransactionType.TRANSFER,
                self._amount(person),
                None,
                to=to,
                device=device,
                ip=ip,
            )
        elif roll < 0.24:
            to = self.by_id[rng.choice(person.shops)]
            self._pay(
                person,
                at,
                TransactionType.TRANSFER,
                self._amount(person),
                None,
                to=to,
                device=device,
                ip=ip,
            )
        elif roll < 0.45:
            merchant = rng.choice(person.merchants)
            self._pay(
                person,
                at,
                TransactionType.CARD_PAYMENT,
                self._amount(person),
                merchant,
                device=device,
                ip=ip,
                located=False,
            )
        else:
            merchant = (
                rng.choice(person.merchants)
                if rng.random() < 0.93
                else rng.choices(self.merchants, self.merchant_weights)[0]
            )
            self._pay(
                person,
                at,
                TransactionType.CARD_PAYMENT,
                self._amount(person),
                merchant,
            )

    def monthly(self, person: Persona, day: int) -> None:
        """Salary on payday; rent and bills (in a burst right after salary for some)."""
        date = START + timedelta(days=day)
        if date.day != person.payday:
            return
        rng = self.rng
        at = self._day_time(day, 6, 9)
        self._pay(
            person, at, TransactionType.DEPOSIT, person.salary, person.employer, located=False
        )
        payees = [(person.landlord, person.rent), *person.bills]
        for payee, amount in payees:
            if person.burst_payer:
                at += timedelta(seconds=rng.randint(20, 240))
                look = "payday_burst"
            else:
                at = self._day_time(day + rng.randint(0, 5), 8, 22)
                look = None
            self._pay(
                person,
                at,
                TransactionType.TRANSFER,
                amount,
                payee,
                device=person.device_at(at),
                ip=person.ips_at(at)[0],
                located=False,
                lookalike=look,
            )

    def shop_week(self, shop: Persona, day: int) -> None:
        """A shop pays its supplier about seventy per cent of the week's takings."""
        if day % 7 != 6:
            return
        takings = sum(self.takings.get((shop.id, d), 0) for d in range(day - 6, day + 1))
        if takings:
            self._pay(
                shop,
                self._day_time(day, 18, 20),
                TransactionType.TRANSFER,
                int(takings * self.rng.uniform(0.6, 0.8)),
                shop.supplier,
                device=shop.devices[0],
                ip=shop.ips[0],
                lookalike="shop_supplier",
            )

    def ordinary_days(self, person: Persona, skip: set[int]) -> None:
        for day in range(self.scenario.days):
            self.monthly(person, day)
            if day in skip:
                continue
            for _ in range(self._poisson(person.rate)):
                self.everyday(person, self._day_time(day))

    def _poisson(self, lam: float) -> int:
        threshold, k, product = math.exp(-lam), 0, self.rng.random()
        while product > threshold:
            k += 1
            product *= self.rng.random()
        return k

    def lookalikes(self, person: Persona) -> set[int]:
        """Add this person's unusual-but-legitimate episodes; returns days they are away."""
        rng, first = self.rng, self.scenario.warmup_days
        last = self.scenario.days - 1
        away: set[int] = set()
        if rng.random() < 0.15:  # a holiday abroad
            away = self.holiday(person, rng.randint(first, last - 12))
        free = [day for day in range(first, last - 10) if day not in away] or [first]
        if rng.random() < 0.15:  # a new phone, often with a new network
            self.new_phone(person, self._day_time(rng.choice(free)))
        if rng.random() < 0.2:  # a big one-off purchase, online
            at = self._day_time(rng.choice(free))
            merchant = rng.choices(self.merchants, self.merchant_weights)[0]
            amount = self._amount(person, rng.uniform(3, 12))
            self._own(person, at, TransactionType.CARD_PAYMENT, amount, merchant, "big_purchase")
        if rng.random() < 0.1:  # rent for the whole quarter in one payment
            at = self._day_time(rng.choice(free))
            self._own(
                person,
                at,
                TransactionType.TRANSFER,
                person.rent * 3,
                person.landlord,
                "rent_lump_sum",
            )
        if rng.random() < 0.01:  # moving house: deposit and first rent to a new landlord
            at = self._day_time(rng.choice(free))
            self._own(
                person,
                at,
                TransactionType.TRANSFER,
                person.rent * 3,
                f"iban_newlandlord_{person.id}",
                "new_landlord",
            )
        if rng.random() < 0.01:  # buying a car: two payments just under the threshold
            at = self._day_time(rng.choice(free))
            for _ in range(2):
                self._own(
                    person,
                    at,
                    TransactionType.TRANSFER,
                    rng.randint(860_000, 990_000),
                    f"iban_cardealer_{person.id}",
                    "car_purchase",
                )
                at += timedelta(hours=rng.randint(6, 60))
        if rng.random() < 0.03:  # a family loan repaid within days
            friend = self.by_id[rng.choice(person.friends)]
            amount = rng.randint(60_000, 300_000)
            at = self._day_time(rng.choice(free))
            self._pay(
                person,
                at,
                TransactionType.TRANSFER,
                amount,
                None,
                to=friend,
                device=person.device_at(at),
                ip=person.ips_at(at)[0],
                located=False,
                lookalike="family_loan",
            )
            back = at + timedelta(days=rng.uniform(2, 10))
            self._pay(
                friend,
                back,
                TransactionType.TRANSFER,
                amount,
                None,
                to=person,
                device=friend.device_at(back),
                ip=friend.ips_at(back)[0],
                located=False,
                lookalike="family_loan",
            )
        return away

    def _own(
        self,
        person: Persona,
        at: datetime,
        kind: TransactionType,
        amount: int,
        payee: str,
        lookalike: str,
    ) -> None:
        """A payment from the person's own phone and home network, without a location."""
        self._pay(
            person,
            at,
            kind,
            amount,
            payee,
            device=person.device_at(at),
            ip=person.ips_at(at)[0],
            located=False,
            lookalike=lookalike,
        )

    def new_phone(self, person: Persona, at: datetime) -> None:
        """From ``at`` on the person uses a new phone, often on a new network too."""
        rng = self.rng
        person.switch_at = at
        person.devices.append(f"{person.devices[0]}_new")
        if rng.random() < 0.5:
            person.new_ip = f"172.16.{rng.randrange(250)}.{rng.randrange(250)}"
        for payee in rng.sample(person.friends, 2):
            at += timedelta(minutes=rng.randint(5, 120))
            self._pay(
                person,
                at,
                TransactionType.TRANSFER,
                self._amount(person),
                None,
                to=self.by_id[payee],
                device=person.device_at(at),
                ip=person.ips_at(at)[-1],
                lookalike="new_phone",
            )
        if rng.random() < 0.3:  # and soon a first payment to someone new
            at += timedelta(hours=2)
            self._pay(
                person,
                at,
                TransactionType.TRANSFER,
                self._amount(person, 1.5),
                f"iban_new_{person.id}",
                device=person.device_at(at),
                ip=person.ips_at(at)[-1],
                lookalike="new_phone",
            )

    def holiday(self, person: Persona, day: int) -> set[int]:
        """Fly abroad (at airliner speed, with time at airports), spend, fly home."""
        rng = self.rng
        dest = rng.choice(ABROAD)
        length = rng.randint(4, 10)
        hotel_ip = f"198.51.{rng.randrange(250)}.{rng.randrange(250)}"
        _, hlat, hlon = person.home
        hours = haversine_km(hlat, hlon, dest[1], dest[2]) / 750 + rng.uniform(2, 4)
        leave = self._day_time(day, 6, 12)
        self._pay(
            person,
            leave,
            TransactionType.CARD_PAYMENT,
            self._amount(person),
            rng.choice(person.merchants),
            lookalike="holiday",
        )
        arrive = leave + timedelta(hours=hours)
        for offset in range(length):
            start = arrive if offset == 0 else self._day_time(day + offset, 8, 10)
            for n in range(rng.randint(1, 4)):
                at = start + timedelta(hours=n * rng.uniform(1, 3))
                online = rng.random() < 0.3
                self._pay(
                    person,
                    at,
                    TransactionType.CARD_PAYMENT,
                    self._amount(person, 1.3),
                    f"mer_abroad_{dest[0]}_{rng.randrange(40)}",
                    device=person.device_at(at) if online else None,
                    ip=hotel_ip if online else None,
                    place=dest,
                    located=not online,
                    lookalike="holiday",
                )
        return set(range(day, day + length + 2))

    # --- fraud ------------------------------------------------------------------------

    def _case(self, typology: Typology) -> str:
        self.cases += 1
        return f"case_{typology.value}_{self.cases:04d}"

    def _actor(self) -> Persona:
        """A customer not yet used in a case (re-used only when everyone has been)."""
        if not self.actors:
            self.actors = list(self.people)
            self.rng.shuffle(self.actors)
        return self.actors.pop()

    def _when(self, person: Persona) -> tuple[int, datetime]:
        """A day the person is at home in the evaluation window, and a time on it."""
        first, last = self.scenario.warmup_days, self.scenario.days - 4
        days = [d for d in range(first, last) if d not in self.away.get(person.id, set())]
        day = self.rng.choice(days or [first])
        return day, self._day_time(day, 8, 21)

    def _mean(self, person: Persona) -> float:
        return person.median * math.exp(person.sigma**2 / 2)

    def velocity_burst(self) -> None:
        """Card testing: a run of small online card payments at new merchants in minutes."""
        rng, victim, case = self.rng, self._actor(), self._case(Typology.VELOCITY_BURST)
        _, at = self._when(victim)
        device, ip = f"dev_fraud_{case}", f"203.0.{rng.randrange(250)}.{rng.randrange(250)}"
        for n in range(rng.randint(5, 14)):
            at += timedelta(seconds=rng.randint(3, 45))
            merchant = f"mer_test_{case}_{n}" if rng.random() < 0.8 else rng.choice(self.merchants)
            self._pay(
                victim,
                at,
                TransactionType.CARD_PAYMENT,
                rng.randint(100, 1500),
                merchant,
                device=device,
                ip=ip,
                located=False,
                case=case,
                typology=Typology.VELOCITY_BURST,
            )

    def amount_spike(self) -> None:
        """A scam: the customer, on their own phone, pays a stranger far more than usual."""
        rng, victim, case = self.rng, self._actor(), self._case(Typology.AMOUNT_SPIKE)
        _, at = self._when(victim)
        payee = f"iban_scam_{case}"
        for _ in range(2 if rng.random() < 0.3 else 1):
            amount = int(self._mean(victim) * rng.uniform(6, 40))
            self._pay(
                victim,
                at,
                TransactionType.TRANSFER,
                amount,
                payee,
                device=victim.device_at(at),
                ip=victim.ips_at(at)[0],
                case=case,
                typology=Typology.AMOUNT_SPIKE,
            )
            at += timedelta(hours=rng.uniform(1, 6))

    def new_device(self) -> None:
        """Account takeover: a new device on a new network pays new payees."""
        rng, victim, case = self.rng, self._actor(), self._case(Typology.NEW_DEVICE)
        _, at = self._when(victim)
        device, ip = f"dev_fraud_{case}", f"203.0.{rng.randrange(250)}.{rng.randrange(250)}"
        place = victim.home if rng.random() < 0.6 else rng.choice(ABROAD)
        for n in range(rng.randint(1, 3)):
            at += timedelta(minutes=rng.randint(2, 30))
            amount = int(self._mean(victim) * rng.uniform(1.5, 8))
            self._pay(
                victim,
                at,
                TransactionType.TRANSFER,
                amount,
                f"iban_ato_{case}_{n}",
                device=device,
                ip=ip,
                place=place,
                located=False,
                case=case,
                typology=Typology.NEW_DEVICE,
            )

    def impossible_travel(self) -> None:
        """A cloned card used 1 000 km or more away, minutes after the real card at home."""
        rng, victim, case = self.rng, self._actor(), self._case(Typology.IMPOSSIBLE_TRAVEL)
        _, at = self._when(victim)
        self._pay(
            victim,
            at,
            TransactionType.CARD_PAYMENT,
            self._amount(victim),
            rng.choice(victim.merchants),
        )
        _, lat, lon = victim.home
        far = [p for p in (*ABROAD, *HOMES) if haversine_km(lat, lon, p[1], p[2]) >= 1000]
        place = rng.choice(far)
        at += timedelta(minutes=rng.uniform(5, 120))
        for n in range(rng.randint(1, 3)):
            self._pay(
                victim,
                at,
                TransactionType.CARD_PAYMENT,
                self._amount(victim, 2),
                f"mer_clone_{case}_{n}",
                place=place,
                case=case,
                typology=Typology.IMPOSSIBLE_TRAVEL,
            )
            at += timedelta(minutes=rng.randint(3, 40))

    def structuring(self) -> None:
        """Cash deposits kept just under the reporting threshold over a few days."""
        rng, depositor, case = self.rng, self._actor(), self._case(Typology.STRUCTURING)
        _, at = self._when(depositor)
        for _ in range(rng.randint(3, 6)):
            low = 800_000 if rng.random() < 0.1 else 880_000
            self._pay(
                depositor,
                at,
                TransactionType.DEPOSIT,
                rng.randint(low, 999000),
                f"cash_atm_{rng.randrange(200)}",
                located=False,
                case=case,
                typology=Typology.STRUCTURING,
            )
            at += timedelta(hours=rng.uniform(3, 20))

    def mule(self) -> None:
        """Many people pay one account, which pays most of it out again within hours."""
        rng, mule, case = self.rng, self._actor(), self._case(Typology.MULE)
        _, at = self._when(mule)
        senders = rng.sample([p for p in self.people if p is not mule], rng.randint(5, 12))
        received = 0
        for sender in senders:
            at += timedelta(minutes=rng.uniform(5, 90))
            amount = rng.randint(20_000, 150_000)
            received += amount
            self._pay(
                sender,
                at,
                TransactionType.TRANSFER,
                amount,
                None,
                to=mule,
                device=sender.device_at(at),
                ip=sender.ips_at(at)[0],
                located=False,
                case=case,
                typology=Typology.MULE,
            )
        at += timedelta(hours=rng.uniform(0.5, 6))
        parts = rng.randint(1, 3)
        for n in range(parts):
            amount = int(received * rng.uniform(0.8, 0.95) / parts)
            self._pay(
                mule,
                at,
                TransactionType.TRANSFER,
                amount,
                f"iban_cashout_{case}_{n}",
                device=mule.device_at(at),
                ip=mule.ips_at(at)[0],
                located=False,
                case=case,
                typology=Typology.MULE,
            )
            at += timedelta(minutes=rng.uniform(5, 60))

    def round_tripping(self) -> None:
        """Money sent out comes back to the sender, directly or through a third account."""
        rng, case = self.rng, self._case(Typology.ROUND_TRIPPING)
        origin, middle = self._actor(), self._actor()
        _, at = self._when(origin)
        amount = rng.randint(200_000, 2_000_000)
        chain = [origin, middle] + ([self._actor()] if rng.random() < 0.5 else []) + [origin]
        for payer, payee in itertools.pairwise(chain):
            self._pay(
                payer,
                at,
                TransactionType.TRANSFER,
                amount,
                None,
                to=payee,
                device=payer.device_at(at),
                ip=payer.ips_at(at)[0],
                located=False,
                case=case,
                typology=Typology.ROUND_TRIPPING,
            )
            at += timedelta(hours=rng.uniform(6, 40))
            amount = int(amount * rng.uniform(0.93, 0.995))


INJECT: Final = {
    Typology.VELOCITY_BURST: Simulation.velocity_burst,
    Typology.AMOUNT_SPIKE: Simulation.amount_spike,
    Typology.NEW_DEVICE: Simulation.new_device,
    Typology.IMPOSSIBLE_TRAVEL: Simulation.impossible_travel,
    Typology.STRUCTURING: Simulation.structuring,
    Typology.MULE: Simulation.mule,
    Typology.ROUND_TRIPPING: Simulation.round_tripping,
}


def generate(seed: int, scenario: Scenario = Scenario()) -> list[Labelled]:
    """Every transaction of the simulation, in time order; the same list for the same seed."""
    sim = Simulation(seed, scenario)
    for person in sim.people:
        sim.away[person.id] = sim.lookalikes(person)
    for person in sim.people:
        sim.ordinary_days(person, sim.away[person.id])
    for inject in INJECT.values():
        for _ in range(scenario.cases_per_typology):
            inject(sim)
    for shop in sim.shops:
        for day in range(scenario.days):
            sim.shop_week(shop, day)
    return sorted(sim.out, key=lambda label: (label.txn.occurred_at, label.txn.transaction_id))
