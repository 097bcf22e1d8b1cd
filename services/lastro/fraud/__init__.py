"""The fraud service: screening on the money path, streaming typologies, rules as data.

Owns
    The fraud rule set (FraudRule resources compiled to CEL programs, versioned,
    never replaced by an invalid rule), the per-customer and per-counterparty
    profiles the features come from (Redis, compact versioned JSON), the
    screening decisions (approve | challenge | review | decline, with the score,
    the rule-set version and the reasons) and the alerts the detectors raise.
    The rules of all of it are pure and live in :mod:`lastro.fraud.domain`;
    :mod:`lastro.fraud.rulefiles` reads ``policies/fraudrules``;
    :mod:`lastro.fraud.evaluation` measures the detectors on seeded synthetic
    traffic (:mod:`lastro.fraud.synthetic`).

Publishes (CloudEvents through the outbox)
    ``lastro.fraud.alert_raised`` and ``lastro.fraud.alert_resolved`` on
    ``lastro.fraud``; a high-severity alert asks the account service to freeze
    the account.

Trusts
    The transaction service's service token (audience ``fraud``, scope
    ``fraud:screen``) for screening, and the signed transaction events on
    ``lastro.transactions``; rule publishers (operator, admin API with
    ``fraud:admin``) for rules, but not their expressions: every expression is
    type-checked before use and runs inside CEL's limits, never as Python.
"""
