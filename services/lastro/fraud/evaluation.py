"""``lastro fraud evaluate``: precision, recall and F1 per typology on synthetic traffic.

Generates a seeded simulation (:mod:`lastro.fraud.synthetic`), then replays it in
time order through the code the services run: for every transaction the
profiles' features and the rule set's screening (the fraud API's path), then the
streaming detectors, which apply the transaction to the profiles (the analyser's
path). Every transaction is treated as posted whatever the screening said, so
the detectors' numbers do not depend on the rules.

Metrics, counted over the evaluation window (after the warm-up days):

- a *case* is one injected fraud scenario (one or more transactions); recall of a
  typology is the share of its cases with at least one alert of that typology on
  one of the case's transactions;
- precision of a typology is alerts on transactions of its own cases over those
  plus alerts on legitimate transactions (an alert on a transaction *related* to a
  case of its typology, such as the legitimate half of an impossible-travel pair,
  counts for that case). An alert on a case of another typology
  is real fraud typed differently: it is reported as ``cross`` and counted in
  neither;
- the false-positive rate is the share of legitimate transactions with an alert
  (and, separately, with a screening decision other than approve).

The JSON report (``--json``) also lists every false alert: its typology, the
look-alike behind the transaction, the transaction and the alert's evidence, so a
detector's false alerts can be read without a debugger.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from lastro.fraud.domain.decision import Outcome
from lastro.fraud.domain.detectors import Alert, Typology, observe
from lastro.fraud.domain.features import compute_features
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
from lastro.fraud.domain.rules import RuleSet
from lastro.fraud.domain.transactions import Status, TransactionEvent
from lastro.fraud.rulefiles import load_rule_files
from lastro.fraud.synthetic import START, Labelled, Scenario, generate


@dataclass
class TypologyScore:
    """One typology's counts and the metrics derived from them."""

    cases: int = 0
    detected: int = 0
    true_alerts: int = 0
    false_alerts: int = 0
    cross_alerts: int = 0
    screened_cases: int = 0

    @property
    def precision(self) -> float:
        flagged = self.true_alerts + self.false_alerts
        return self.true_alerts / flagged if flagged else 0.0

    @property
    def recall(self) -> float:
        return self.detected / self.cases if self.cases else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def screening_recall(self) -> float:
        return self.screened_cases / self.cases if self.cases else 0.0


@dataclass
class Report:
    """The outcome of one evaluation run."""

    seed: int
    scenario: Scenario
    transactions: int = 0
    legitimate: int = 0
    legitimate_alerted: int = 0
    legitimate_screened: int = 0
    typologies: dict[str, TypologyScore] = field(
        default_factory=lambda: {typology.value: TypologyScore() for typology in Typology}
    )
    false_alerts_by_lookalike: dict[str, int] = field(default_factory=dict)
    false_alerts: list[dict[str, Any]] = field(default_factory=list)
    """Every alert on a legitimate transaction, in the order raised (:func:`score`)."""
    shadow_hits: dict[str, int] = field(default_factory=dict)
    enforced_hits_on_legitimate: dict[str, int] = field(default_factory=dict)
    rule_failures: int = 0
    ruleset_version: int = 0
    seconds: float = 0.0

    @property
    def false_positive_rate(self) -> float:
        return self.legitimate_alerted / self.legitimate if self.legitimate else 0.0

    @property
    def screening_false_positive_rate(self) -> float:
        return self.legitimate_screened / self.legitimate if self.legitimate else 0.0

    def lines(self) -> list[str]:
        """One line per typology, then the legitimate-traffic rates."""
        out = []
        for name, score in self.typologies.items():
            out.append(
                f"{name:<18} precision={score.precision:.3f} recall={score.recall:.3f}"
                f" f1={score.f1:.3f} cases={score.cases} detected={score.detected}"
                f" alerts={score.true_alerts + score.false_alerts}"
                f" false={score.false_alerts} cross={score.cross_alerts}"
                f" screening_recall={score.screening_recall:.3f}"
            )
        out.append(
            f"{'legitimate':<18} false_positive_rate={self.false_positive_rate:.4f}"
            f" ({self.legitimate_alerted} of {self.legitimate} transactions alerted)"
            f" screening_false_positive_rate={self.screening_false_positive_rate:.4f}"
            f" ({self.legitimate_screened} not approved)"
        )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "scenario": asdict(self.scenario),
            "transactions": self.transactions,
            "ruleset_version": self.ruleset_version,
            "typologies": {
                name: {
                    **asdict(score),
                    "precision": round(score.precision, 4),
                    "recall": round(score.recall, 4),
                    "f1": round(score.f1, 4),
                    "screening_recall": round(score.screening_recall, 4),
                }
                for name, score in self.typologies.items()
            },
            "legitimate": {
                "transactions": self.legitimate,
                "alerted": self.legitimate_alerted,
                "not_approved": self.legitimate_screened,
                "false_positive_rate": round(self.false_positive_rate, 5),
                "screening_false_positive_rate": round(self.screening_false_positive_rate, 5),
                "false_alerts_by_lookalike": self.false_alerts_by_lookalike,
                "enforced_rule_hits": self.enforced_hits_on_legitimate,
            },
            "false_alerts": self.false_alerts,
            "shadow_hits": self.shadow_hits,
            "rule_failures": self.rule_failures,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What the platform did with each transaction: its alerts and its screening outcome."""

    alerts: dict[str, list[Alert]]
    screening: dict[str, Outcome]
    shadow_hits: Counter[str]
    rule_failures: int
    fired: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Transaction id → the enforced rules that fired on it."""


def replay(labelled: Iterable[Labelled], rules: RuleSet) -> Outcomes:
    """Screen and analyse every transaction in order, as the fraud service and analyser do."""
    customers: dict[str, CustomerProfile] = {}
    counterparties: dict[str, CounterpartyProfile] = {}
    alerts: dict[str, list[Alert]] = defaultdict(list)
    screening: dict[str, Outcome] = {}
    fired: dict[str, tuple[str, ...]] = {}
    shadow: Counter[str] = Counter()
    failures = 0
    for label in labelled:
        txn = label.txn
        payer = customers.setdefault(txn.customer_id, CustomerProfile(txn.customer_id))
        receiver_id = txn.counterparty_customer_id
        receiver = (
            customers.setdefault(receiver_id, CustomerProfile(receiver_id)) if receiver_id else None
        )
        party = None if txn.is_incoming else txn.other_party
        counterparty = (
            counterparties.setdefault(party, CounterpartyProfile(party)) if party else None
        )
        decision = rules.screen(
            txn, compute_features(payer, txn, counterparty), now=txn.occurred_at
        )
        screening[txn.transaction_id] = decision.outcome
        if decision.reasons:
            fired[txn.transaction_id] = tuple(reason.rule_id for reason in decision.reasons)
        shadow.update(reason.rule_id for reason in decision.shadow)
        failures += len(decision.failed)
        event = TransactionEvent(Status.POSTED, txn)
        for alert in observe(event, payer, receiver, counterparty):
            alerts[alert.transaction_id].append(alert)
    return Outcomes(dict(alerts), screening, shadow, failures, fired)


def score(labelled: Sequence[Labelled], outcomes: Outcomes, report: Report) -> Report:
    """Fill ``report`` with the metrics of ``outcomes`` against the labels."""
    start = START + timedelta(days=report.scenario.warmup_days)
    window = [label for label in labelled if label.txn.occurred_at >= start]
    by_txn = {label.txn.transaction_id: label for label in window}
    scores = {typology.value: TypologyScore() for typology in Typology}
    case_typology: dict[str, str] = {}
    screened_cases: set[str] = set()
    legitimate_hits: Counter[str] = Counter()
    for label in window:
        outcome = outcomes.screening.get(label.txn.transaction_id, Outcome.APPROVE)
        if label.case_id is not None and label.typology is not None:
            case_typology[label.case_id] = label.typology.value
            if outcome is not Outcome.APPROVE:
                screened_cases.add(label.case_id)
            continue
        report.legitimate += 1
        report.legitimate_alerted += bool(outcomes.alerts.get(label.txn.transaction_id))
        report.legitimate_screened += outcome is not Outcome.APPROVE
        legitimate_hits.update(outcomes.fired.get(label.txn.transaction_id, ()))
    lookalikes: Counter[str] = Counter()
    detected: set[tuple[str, str]] = set()
    for txn_id, alerts in outcomes.alerts.items():
        if txn_id not in by_txn:
            continue
        for alert in alerts:
            label = _label_of(alert, by_txn)
            kind = scores[alert.typology.value]
            if label.typology is None:
                kind.false_alerts += 1
                lookalikes[label.lookalike or "ordinary"] += 1
                report.false_alerts.append(_false_alert(alert, label))
            elif label.typology is alert.typology and label.case_id is not None:
                kind.true_alerts += 1
                detected.add((alert.typology.value, label.case_id))
            else:
                kind.cross_alerts += 1
    for case_id, typology in case_typology.items():
        scores[typology].cases += 1
        scores[typology].detected += (typology, case_id) in detected
        scores[typology].screened_cases += case_id in screened_cases
    report.transactions = len(window)
    report.typologies = scores
    report.false_alerts_by_lookalike = dict(lookalikes.most_common())
    report.shadow_hits = dict(outcomes.shadow_hits.most_common())
    report.enforced_hits_on_legitimate = dict(legitimate_hits.most_common())
    report.rule_failures = outcomes.rule_failures
    return report


def _false_alert(alert: Alert, label: Labelled) -> dict[str, Any]:
    """What the JSON report says about an alert on a legitimate transaction."""
    txn = label.txn
    return {
        "typology": alert.typology.value,
        "severity": alert.severity.value,
        "lookalike": label.lookalike or "ordinary",
        "transaction_id": txn.transaction_id,
        "customer_id": txn.customer_id,
        "type": txn.type.value,
        "amount": txn.amount,
        "counterparty": txn.counterparty,
        "occurred_at": txn.occurred_at.isoformat(),
        "evidence": alert.evidence,
    }


def _label_of(alert: Alert, by_txn: dict[str, Labelled]) -> Labelled:
    """The label of the alerted transaction, or of a related one in a case of the same typology.

    Some patterns are a property of several transactions (impossible travel is a
    pair of places): an alert on the legitimate half of a pair whose other half is
    fraud of the alert's typology counts for that case.
    """
    label = by_txn[alert.transaction_id]
    for related in alert.related:
        other = by_txn.get(related)
        if label.typology is not alert.typology and other and other.typology is alert.typology:
            return other
    return label


def evaluate(seed: int, scenario: Scenario, rules: RuleSet) -> Report:
    """Generate the simulation for ``seed``, replay it, and score it."""
    began = time.perf_counter()
    labelled = generate(seed, scenario)
    outcomes = replay(labelled, rules)
    report = score(labelled, outcomes, Report(seed, scenario, ruleset_version=rules.version))
    report.seconds = time.perf_counter() - began
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lastro fraud evaluate",
        description="Precision, recall and F1 per fraud typology on seeded synthetic traffic.",
    )
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--json", type=Path, help="also write the full report here")
    defaults = Scenario()
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--cases", type=int, default=defaults.cases_per_typology)
    parser.add_argument("--rules", type=Path, help="FraudRule directory (default: policies/)")
    args = parser.parse_args(argv)
    try:
        scenario = Scenario(customers=args.customers, days=args.days, cases_per_typology=args.cases)
    except ValueError as exc:
        parser.error(str(exc))
    rules = RuleSet.of(load_rule_files(args.rules) if args.rules else load_rule_files())
    report = evaluate(args.seed, scenario, rules)
    print("\n".join(report.lines()))
    print(
        f"seed {args.seed}: {report.transactions} transactions after {scenario.warmup_days}"
        f" warm-up days, rule set version {report.ruleset_version}, {report.seconds:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
