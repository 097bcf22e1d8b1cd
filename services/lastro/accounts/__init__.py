"""The account service: customers, accounts and the double-entry ledger.

Owns
    Customers (PII encrypted through Transit, blind-indexed lookups, erasure by
    crypto-shredding), accounts (one currency each; ``customer`` accounts and the
    ``system`` accounts for settlement, fees and FX positions; status active |
    frozen | closed; optional overdraft limit; metadata), postings and their
    entries, balances (posted, pending, available), holds (pending → posted |
    voided | expired) and statements. It is the single ACID boundary for money:
    concurrent postings are group-committed: one transaction locks their accounts
    in id order and writes entries, balance changes, audit records and outbox
    events together (a request that breaks a rule fails alone). The rules themselves live in
    :mod:`lastro.accounts.domain` (pure, no I/O); the database repeats the money
    invariants as constraints.

    Personal data: it answers the privacy API (``privacy.py``, ``core/privacy.py``)
    and hosts the platform's data-subject requests (``subject_requests.py``: one
    KMS-signed export bundle from every service holding personal data, erasure
    fanned out to each with a stored, signed erasure certificate; docs/privacy.md).

Publishes (CloudEvents through the outbox, topics ``lastro.ledger`` and
``lastro.accounts``, keyed by account id)
    ``lastro.ledger.posting_created`` (also for reversals, with ``reverses``),
    ``lastro.ledger.hold_placed``, ``lastro.ledger.hold_posted``,
    ``lastro.ledger.hold_voided``, ``lastro.ledger.hold_expired``,
    ``lastro.account.opened``, ``lastro.account.frozen``,
    ``lastro.account.unfrozen``, ``lastro.account.closed``,
    ``lastro.customer.created``, ``lastro.customer.updated``,
    ``lastro.customer.erased`` (ids and field names only, never personal data).

Trusts
    Access tokens issued by the identity service (JWKS), with ``accounts:*`` scopes
    for customer routes and a service token whose audience is ``accounts`` for the
    ``/internal`` routes used by transactions (``ledger:write``) and the operator
    (``privacy:admin``); the KMS for keys; its
    own PostgreSQL schema. It trusts no caller's arithmetic: every posting is
    re-validated (balanced per currency, positive integer amounts, account
    currencies and statuses, spend limits) and is idempotent on the caller's
    ``external_id``.
"""
