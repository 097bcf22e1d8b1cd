"""The transaction service: money movements from request to ledger and back.

Owns
    Transactions (``txn_``): transfers between Lastro accounts, cross-currency
    transfers against FX quotes (``quo_``), card payments through the acquirer
    (authorise, capture in full or in part, void, refunds ``re_``), payouts to
    bank accounts (IBAN and holder sealed under a per-payout data key), deposits
    from acquirer settlements, and transfer batches (``bat_``, up to 1,000,
    atomic or independent). Each has a persisted state machine
    (:mod:`lastro.transactions.domain.machine`): received → screening → approved
    → posted → settled | declined | failed | reversed | refunded, with
    ``challenged`` (waiting for the customer's step-up), ``in_review`` (money held
    until a fraud alert is resolved) and ``authorized`` (a card payment waiting
    for capture). Also: idempotency keys of its API, FX quotes, the system
    accounts it opened in the ledger (fx, acquirer, bank, batch clearing).

How it runs
    The API (:mod:`.app`, ``lastro serve transactions``) validates, checks
    ownership with the account service and step-up for large amounts, and stores
    the transaction, its ``received`` event, its audit record and a command in one
    transaction; it answers 202 (or the resting state within ``Prefer: wait``).
    Its use cases (:mod:`.service`) are one module per flow: :mod:`.transfers`,
    :mod:`.payments`, :mod:`.payouts`, :mod:`.reviews`, :mod:`.settlements`.
    Workers (:mod:`.worker`, ``lastro serve transactions-worker``) form a Kafka
    consumer group on ``lastro.transactions.commands``, keyed by source account,
    and move each transaction on (:mod:`.processor`; each effect performed by
    :mod:`.receivers`): screening (fraud service), ledger postings and holds
    (account service), acquirer calls. Every state is stored before the
    next side effect, and every side effect is idempotent at its receiver, so a
    worker killed anywhere is resumed by the next one without a second posting
    or a second charge; failures after money was held or moved are compensated
    (void, reversal, refund). docs/runbooks/transactions.md is the operator's view.
    The fraud service reports how a held transaction's alert was resolved
    (``/internal/v1/transactions/{id}/review-outcome``, ``transactions:review``);
    the shared privacy API (``core.privacy``; :mod:`.privacy`, ``privacy:admin``)
    exports, erases and purges the personal fields of transactions, never amounts
    or postings, so data-subject requests (``lastro gdpr``) reach it.

Publishes (topic ``lastro.transactions``, key = source account)
    ``lastro.transaction.received|screened|challenged|approved|authorized|posted|
    settled|declined|failed|reversed|refunded|refund_failed|capture_failed|
    reversal_failed`` and ``lastro.payout.sent`` (:mod:`.events`); commands on
    ``lastro.transactions.commands``.

Trusts
    Access tokens from the identity service (audience ``transactions``; scopes in
    ``openapi.yaml``); the account service for ownership (the caller's token is
    forwarded) and the ledger (its own service token, ``ledger:write``); the fraud
    service's screening (``fraud:screen``), with a documented fallback when it
    cannot answer in 300 ms; the acquirer (API key; settlement callbacks are
    verified by HMAC); the FX provider (API key; rates cached in Redis, served
    stale up to a limit). The KMS for event signatures, the audit key and PII
    data keys; its own PostgreSQL schema.
"""
