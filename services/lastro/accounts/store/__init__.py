"""Storage of the account service: its tables and every query it runs.

Modules: ``tables`` (metadata, constants, migrations), ``postings`` (the posting
hot path), ``accounts`` (accounts, holds, history), ``customers``, and
``verification`` (proof of the ledger's invariants). Use cases hold the query
objects and pass them their transaction; every query returns domain values.
"""

from lastro.accounts.store.accounts import AccountQueries, decode_cursor, encode_cursor
from lastro.accounts.store.customers import CustomerQueries, SealedCustomer
from lastro.accounts.store.postings import PostingQueries
from lastro.accounts.store.tables import (
    CUSTOMERS,
    EMAIL_INDEX_CONSTRAINT,
    HOLD_EXTERNAL_ID_KEY,
    MIGRATIONS,
    POSTING_EXTERNAL_ID_KEY,
    POSTING_REVERSES_KEY,
    SEALED_COLUMNS,
    LedgerTables,
    customers_table,
    ledger_tables,
    migrate_accounts,
    schema_metadata,
)
from lastro.accounts.store.verification import BalanceMismatch, LedgerReport, verify_ledger

__all__ = [
    "CUSTOMERS",
    "EMAIL_INDEX_CONSTRAINT",
    "HOLD_EXTERNAL_ID_KEY",
    "MIGRATIONS",
    "POSTING_EXTERNAL_ID_KEY",
    "POSTING_REVERSES_KEY",
    "SEALED_COLUMNS",
    "AccountQueries",
    "BalanceMismatch",
    "CustomerQueries",
    "LedgerReport",
    "LedgerTables",
    "PostingQueries",
    "SealedCustomer",
    "customers_table",
    "decode_cursor",
    "encode_cursor",
    "ledger_tables",
    "migrate_accounts",
    "schema_metadata",
    "verify_ledger",
]
