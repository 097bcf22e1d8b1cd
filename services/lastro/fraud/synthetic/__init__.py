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
- shops: many customers paying them every day, a large weekly supplier payment;
- collections for a neighbour in need: many unrelated customers paying one account
  nobody paid before within days, some far more than usual.

Scam victims (amount spike) pay mule accounts that other victims pay too: half the
cases pay an account another case already paid while it is still open (1 to 6 days).

Into the evaluation window (after ``warmup_days``) it injects
``cases_per_typology`` cases of every :class:`Typology`, each a set of
transactions labelled with a case id. Everything is EUR. No I/O.
"""

from lastro.fraud.synthetic.typologies import INJECT, Simulation, generate
from lastro.fraud.synthetic.world import CURRENCY, START, Labelled, Persona, Scenario

__all__ = [
    "CURRENCY",
    "INJECT",
    "START",
    "Labelled",
    "Persona",
    "Scenario",
    "Simulation",
    "generate",
]
