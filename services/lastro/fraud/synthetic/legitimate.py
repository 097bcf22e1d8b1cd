"""Legitimate behaviour: everyday spending, monthly salary, rent and bills, shops'
takings, and the look-alikes that make fraud detection hard (payday bursts, holidays
abroad, a new phone, big one-off purchases, family loans, collections for a neighbour)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from lastro.fraud.domain.features import haversine_km
from lastro.fraud.domain.transactions import TransactionType
from lastro.fraud.synthetic.world import ABROAD, START, Persona, World


class Legitimate(World):
    """What customers and shops do when nobody is defrauding them."""

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

    def appeals(self) -> None:
        """Collections for a neighbour in need: many unrelated customers pay one new account.

        A funeral, a medical bill, a house fire: an account number shared in a
        parish, a school group or on social media, paid within days by people who
        have never paid it (nor each other), some of them far more than their usual
        spending. To the platform the payee looks like a scam's mule account that
        several victims pay: young, with several unrelated senders.
        """
        side, first = self.side, self.scenario.warmup_days
        for n in range(max(1, self.scenario.customers // 100)):
            day = side.randint(first, self.scenario.days - 8)
            opened = START + timedelta(days=day, seconds=side.randint(7 * 3600, 23 * 3600))
            payee = f"iban_appeal_{n}"
            for donor in side.sample(self.people, side.randint(6, 20)):
                at = opened + timedelta(hours=side.uniform(0, 120))
                scale = side.uniform(1.5, 6) * math.exp(side.gauss(0, donor.sigma))
                amount = int(donor.median * scale)
                self._own(donor, at, TransactionType.TRANSFER, amount, payee, "appeal")

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
