"""Injected fraud: one method per :class:`~lastro.fraud.domain.detectors.Typology`,
each adding a labelled case (a set of transactions with a case id) to the stream."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta
from typing import Final

from lastro.fraud.domain.detectors import Typology
from lastro.fraud.domain.features import haversine_km
from lastro.fraud.domain.transactions import TransactionType
from lastro.fraud.synthetic.legitimate import Legitimate
from lastro.fraud.synthetic.world import (
    ABROAD,
    DEFAULT_SCENARIO,
    HOMES,
    START,
    Labelled,
    Persona,
    Scenario,
)

SCAM_ACCOUNT_REUSE: Final = 0.5
"""Share of scam cases that pay a mule account another victim has already paid."""


class Simulation(Legitimate):
    """Builds the labelled transaction stream for one seed and scenario."""

    def __init__(self, seed: int, scenario: Scenario = DEFAULT_SCENARIO) -> None:
        super().__init__(seed, scenario)
        self.scam_accounts: list[tuple[str, datetime, datetime]] = []
        """Mule accounts scam victims pay: (account, first paid, closed)."""

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

    def _scam_account(self, victim: Persona) -> tuple[str, datetime]:
        """The account a scam victim is told to pay, and when they pay it.

        Scammers cash out through mule accounts that each take money from several
        victims over a few days until the account is reported and closed; a bank
        with many customers sees some of those victims among its own. Here a case
        pays an account a ring already uses (while it is still open) with
        probability ``SCAM_ACCOUNT_REUSE``, else a fresh one that stays open 1 to 6 days.
        """
        side = self.side
        _, at = self._when(victim)
        if self.scam_accounts and side.random() < SCAM_ACCOUNT_REUSE:
            payee, opened, closes = side.choice(self.scam_accounts)
            moment = opened + (closes - opened) * side.random()
            day = min((moment - START).days, self.scenario.days - 4)
            when = START + timedelta(days=day, seconds=side.randint(8 * 3600, 21 * 3600))
            when = max(when, opened + timedelta(minutes=side.uniform(10, 90)))
            if day not in self.away.get(victim.id, set()):
                return payee, when
        payee = f"iban_scam_{len(self.scam_accounts):04d}"
        self.scam_accounts.append((payee, at, at + timedelta(days=side.uniform(1, 6))))
        return payee, at

    def amount_spike(self) -> None:
        """A scam: the customer, on their own phone, pays a stranger far more than usual."""
        rng, victim, case = self.rng, self._actor(), self._case(Typology.AMOUNT_SPIKE)
        payee, at = self._scam_account(victim)
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


def generate(seed: int, scenario: Scenario = DEFAULT_SCENARIO) -> list[Labelled]:
    """Every transaction of the simulation, in time order; the same list for the same seed."""
    sim = Simulation(seed, scenario)
    for person in sim.people:
        sim.away[person.id] = sim.lookalikes(person)
    for person in sim.people:
        sim.ordinary_days(person, sim.away[person.id])
    sim.appeals()
    for inject in INJECT.values():
        for _ in range(scenario.cases_per_typology):
            inject(sim)
    for shop in sim.shops:
        for day in range(scenario.days):
            sim.shop_week(shop, day)
    return sorted(sim.out, key=lambda label: (label.txn.occurred_at, label.txn.transaction_id))
