"""The evaluation harness: deterministic traffic, and metrics computed as documented."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from fraudkit import make_txn

from lastro.fraud.domain.decision import Outcome, Severity
from lastro.fraud.domain.detectors import Alert, Typology
from lastro.fraud.evaluation import Outcomes, Report, main, score
from lastro.fraud.synthetic import START, Labelled, Scenario, generate

TINY = Scenario(customers=40, shops=3, days=49, warmup_days=35, cases_per_typology=2)


def test_the_same_seed_generates_the_same_traffic() -> None:
    first, again, other = generate(11, TINY), generate(11, TINY), generate(12, TINY)
    assert first == again
    assert first != other
    times = [label.txn.occurred_at for label in first]
    assert times == sorted(times)


def test_traffic_holds_every_typology_and_the_look_alikes() -> None:
    labelled = generate(3, Scenario(customers=120, shops=4, days=70, cases_per_typology=3))
    cases = {(label.typology, label.case_id) for label in labelled if label.is_fraud}
    assert Counter(typology for typology, _ in cases) == dict.fromkeys(Typology, 3)
    window = START + timedelta(days=35)
    assert all(label.txn.occurred_at >= window for label in labelled if label.is_fraud)
    lookalikes = {label.lookalike for label in labelled}
    assert {"payday_burst", "holiday", "new_phone", "rent_lump_sum", "shop_supplier"} <= lookalikes


def _alert(
    typology: Typology,
    txn_id: str,
    related: tuple[str, ...] = (),
    evidence: dict[str, float] | None = None,
) -> Alert:
    return Alert(
        typology,
        Severity.HIGH,
        "cus_a",
        "acc_a",
        txn_id,
        "detector:x",
        dict(evidence or {}),
        related=related,
    )


def test_metrics_are_computed_from_cases_alerts_and_legitimate_traffic() -> None:
    at = (START + timedelta(days=TINY.warmup_days) - make_txn().occurred_at).total_seconds()
    t = [make_txn(at + n) for n in range(10)]
    early = make_txn(at - 3600)  # before the evaluation window: never counted
    labelled = [
        Labelled(early),
        Labelled(t[0], "c1", Typology.MULE),
        Labelled(t[1], "c1", Typology.MULE),
        Labelled(t[2], "c2", Typology.MULE),
        Labelled(t[3], "c3", Typology.STRUCTURING),
        Labelled(t[4], "c4", Typology.IMPOSSIBLE_TRAVEL),
        Labelled(t[5]),
        Labelled(t[6], lookalike="shop_supplier"),
        Labelled(t[7]),
        Labelled(t[8]),
        Labelled(t[9]),
    ]
    ids = [txn.transaction_id for txn in t]
    alerts = {
        early.transaction_id: [_alert(Typology.MULE, early.transaction_id)],
        ids[1]: [_alert(Typology.MULE, ids[1])],  # c1 detected
        ids[3]: [_alert(Typology.MULE, ids[3])],  # a mule alert on structuring: cross
        ids[6]: [_alert(Typology.MULE, ids[6], evidence={"ratio": 12.5})],  # a false alert
        ids[5]: [_alert(Typology.IMPOSSIBLE_TRAVEL, ids[5], related=(ids[4],))],  # c4 via pair
    }
    screening = {ids[0]: Outcome.REVIEW, ids[3]: Outcome.DECLINE, ids[7]: Outcome.CHALLENGE}
    outcomes = Outcomes(alerts, screening, Counter({"shadow-rule": 4}), 1, {ids[7]: ("rule-x",)})
    report = score(labelled, outcomes, Report(1, TINY))

    mule = report.typologies["mule"]
    assert (mule.cases, mule.detected, mule.true_alerts, mule.false_alerts) == (2, 1, 1, 1)
    assert mule.cross_alerts == 1
    assert mule.precision == pytest.approx(1 / 2)
    assert mule.recall == pytest.approx(1 / 2)
    assert mule.f1 == pytest.approx(1 / 2)
    assert mule.screening_recall == pytest.approx(1 / 2)
    travel = report.typologies["impossible_travel"]
    assert (travel.cases, travel.detected, travel.precision, travel.recall) == (1, 1, 1.0, 1.0)
    structuring = report.typologies["structuring"]
    assert (structuring.recall, structuring.precision, structuring.f1) == (0.0, 0.0, 0.0)
    assert structuring.screening_recall == 1.0
    assert report.typologies["velocity_burst"].cases == 0
    assert report.transactions == 10
    # Legitimate: t5 (alerted, but as the pair of a travel case it is not a false alert,
    # it still received an alert), t6 (false alert), t7 (challenged), t8, t9.
    assert report.legitimate == 5
    assert report.legitimate_alerted == 2
    assert report.false_positive_rate == pytest.approx(2 / 5)
    assert report.screening_false_positive_rate == pytest.approx(1 / 5)
    assert report.false_alerts_by_lookalike == {"shop_supplier": 1}
    [false] = report.false_alerts  # the mule alert on the look-alike, nothing else
    assert false["typology"] == "mule" and false["lookalike"] == "shop_supplier"
    assert false["transaction_id"] == ids[6] and false["amount"] == t[6].amount
    assert false["occurred_at"] == t[6].occurred_at.isoformat()
    assert false["evidence"] == {"ratio": 12.5}
    assert report.shadow_hits == {"shadow-rule": 4} and report.rule_failures == 1
    assert report.enforced_hits_on_legitimate == {"rule-x": 1}


def test_a_report_prints_one_line_per_typology_with_decimals() -> None:
    lines = Report(1, TINY).lines()
    assert len(lines) == len(Typology) + 1
    for line, typology in zip(lines, Typology, strict=False):
        assert line.startswith(typology.value)
        assert "precision=0.000 recall=0.000 f1=0.000" in line
    assert lines[-1].startswith("legitimate") and "false_positive_rate=0.0000" in lines[-1]


def test_the_command_prints_the_metrics_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    argv = ["--seed", "4", "--customers", "40", "--days", "49", "--cases", "1", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == [t.value for t in Typology] + ["legitimate"]
    report = json.loads(out.read_text())
    assert report["seed"] == 4 and set(report["typologies"]) == {t.value for t in Typology}
    for numbers in report["typologies"].values():
        assert numbers["cases"] == 1
        assert 0 <= numbers["precision"] <= 1 and 0 <= numbers["recall"] <= 1
    assert len(report["false_alerts"]) == sum(
        numbers["false_alerts"] for numbers in report["typologies"].values()
    )
    assert main(argv) == 0
    assert json.loads(out.read_text())["typologies"] == report["typologies"]
