"""The fraud service: screening on the money path, streaming typologies, rules as data.

Two processes (``core/registry.py``):

``lastro serve fraud`` (:mod:`.app`)
    Screening (``POST /internal/v1/screenings``): one ``MGET`` of the payer's and the
    receiving side's profiles, the features (:mod:`.domain.features`), the live rule
    set evaluated in memory (CEL, :mod:`.domain.rules`), the decision recorded once
    per transaction id with the rules that fired, their feature values and the
    rule-set version (group-committed, asynchronous commit); a ``review`` opens an
    alert. The rules admin API, the alerts API (assign, resolve, rule statistics)
    and the privacy API. Every replica rebuilds the rule set from the compacted
    topic ``lastro.fraud.rules`` (:mod:`.rulelog`, :mod:`.rulebook`); in dev an
    empty log is seeded from ``policies/fraudrules``.
``lastro serve fraud-analyser`` (:mod:`.analyser`)
    Consumes ``lastro.transactions`` (group ``lastro-fraud-analyser``, through the
    inbox), applies each posted or declined transaction to the Redis profiles
    exactly once (:mod:`.store.profiles`), runs the detectors
    (:mod:`.domain.detectors`) and records their alerts; a high-severity alert asks
    the account service to freeze the account (:mod:`.effects`).

Owns
    The fraud rule set (never replaced by an invalid rule), the per-customer and
    per-counterparty profiles (Redis, compact versioned JSON, device/IP/payee ids as
    digests), the screening decisions and the alerts (schema ``fraud``: tables
    ``screenings``, ``alerts``, outbox, inbox, audit log). The rules of all of it are
    pure and live in :mod:`.domain`; :mod:`.evaluation` measures the detectors and
    rules on seeded synthetic traffic (:mod:`.synthetic`).

Publishes (CloudEvents through the outbox)
    ``lastro.fraud.alert_raised`` and ``lastro.fraud.alert_resolved`` on
    ``lastro.fraud``; ``lastro.fraud.rule_upserted`` and ``lastro.fraud.rule_deleted``
    on ``lastro.fraud.rules`` (its admin API). Calls: accounts
    ``POST /v1/accounts/{id}/freeze`` (high-severity alerts) and transactions
    ``POST /internal/v1/transactions/{id}/review-outcome`` (a held transaction's alert
    resolved), both behind a breaker, retried until done, audited.

Trusts
    The identity service's tokens: the transaction service's (audience ``fraud``,
    scope ``fraud:screen``) for screening, ``fraud:read``/``fraud:admin`` for
    analysts, ``privacy:admin`` for the privacy API; the signed transaction events on
    ``lastro.transactions``; rule publishers (the operator through the admin API or
    the topic, with signed events) for rules, but not their expressions: every
    expression is type-checked before use and runs inside CEL's limits, never as
    Python.
"""
