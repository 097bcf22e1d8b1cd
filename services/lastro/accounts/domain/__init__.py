"""Pure rules of the account service: accounts, the double-entry ledger and holds.

Nothing here does I/O, reads a clock or touches a database: time, randomness and
the current account states are passed in, and every function returns new values
(all types are frozen). ``service.py`` loads and locks the accounts, calls these
functions, and writes what they return in one transaction.

Sign convention (one rule for every account). A balance is ``credits - debits``:
every account is *credit-normal*. A customer account is a liability of the
platform, so a credit (money in) increases it and a debit decreases it. System
accounts (settlement, fees, FX positions) use the same sign, so the platform-wide
invariant is literally "the posted balances of one currency sum to zero". The
settlement account is therefore negative after money enters from outside (it is
the asset side, debit-normal in accounting terms); fee income shows as positive.

Balances. ``posted`` is the sum of posted entries; ``pending`` is the total of the
account's pending holds (reserved debits, never negative); ``available`` is
``posted - pending``. A customer account may spend while ``available`` stays at or
above ``-overdraft_limit``; a system account may go negative without limit,
because it is the other side of money entering or leaving the platform.

Status. ``frozen`` accounts reject debits and new holds but still accept credits
(incoming money is not refused while compliance looks at the account); releasing
a hold (void, expiry) is always allowed. ``closed`` accounts reject everything.
An account can be closed only with zero posted and zero pending balance.

Modules: ``ids``, ``errors``, ``rules`` (request fields), ``accounts``,
``postings``, ``holds``, ``statements``, ``customers``; import from this package.
"""

from lastro.accounts.domain.accounts import (
    Account,
    AccountKind,
    AccountState,
    AccountStatus,
    Balance,
    BalanceDelta,
    close,
    freeze,
    open_account,
    unfreeze,
)
from lastro.accounts.domain.customers import (
    ACTIVE,
    CONTACT_FIELDS,
    ERASED,
    Contact,
    Customer,
    CustomerExport,
    PersonalData,
)
from lastro.accounts.domain.errors import (
    AccountClosed,
    AccountFrozen,
    AccountNotEmpty,
    CurrencyMismatch,
    CustomerErased,
    EmailTaken,
    ExternalIdConflict,
    HoldAlreadyPosted,
    HoldAlreadyVoided,
    HoldAmountExceeded,
    HoldExpired,
    HoldNotExpired,
    HoldNotPending,
    InsufficientFunds,
    InvalidAmount,
    InvalidRequest,
    LedgerError,
    PostingAlreadyReversed,
    ReservedExternalId,
    TooFewEntries,
    UnbalancedPosting,
    UnknownAccount,
    UnknownCurrency,
    UnknownCustomer,
    UnknownHold,
    UnknownPosting,
)
from lastro.accounts.domain.holds import (
    Hold,
    HoldRequest,
    HoldStatus,
    HoldTransition,
    expire_hold,
    hold_fingerprint,
    place_hold,
    post_hold,
    replay_hold,
    void_hold,
)
from lastro.accounts.domain.ids import (
    AccountId,
    CustomerId,
    HoldId,
    PostingId,
    RandomBytes,
    new_account_id,
    new_customer_id,
    new_hold_id,
    new_posting_id,
)
from lastro.accounts.domain.postings import (
    Direction,
    Entry,
    EntryRequest,
    Posting,
    PostingRequest,
    apply_posting,
    posting_fingerprint,
    record_posting,
    replay_posting,
    reverse,
    signed_amount,
    validate_posting,
)
from lastro.accounts.domain.rules import (
    DERIVED_PREFIX,
    MAX_DESCRIPTION_LENGTH,
    MAX_EXTERNAL_ID_LENGTH,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    derived_external_id,
    validate_amount,
    validate_caller_external_id,
    validate_currency,
    validate_description,
    validate_external_id,
    validate_metadata,
)
from lastro.accounts.domain.statements import (
    EntryPage,
    Movement,
    Statement,
    StatementTotals,
    summarize_statement,
)

__all__ = [
    "ACTIVE",
    "CONTACT_FIELDS",
    "DERIVED_PREFIX",
    "ERASED",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_EXTERNAL_ID_LENGTH",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "Account",
    "AccountClosed",
    "AccountFrozen",
    "AccountId",
    "AccountKind",
    "AccountNotEmpty",
    "AccountState",
    "AccountStatus",
    "Balance",
    "BalanceDelta",
    "Contact",
    "CurrencyMismatch",
    "Customer",
    "CustomerErased",
    "CustomerExport",
    "CustomerId",
    "Direction",
    "EmailTaken",
    "Entry",
    "EntryPage",
    "EntryRequest",
    "ExternalIdConflict",
    "Hold",
    "HoldAlreadyPosted",
    "HoldAlreadyVoided",
    "HoldAmountExceeded",
    "HoldExpired",
    "HoldId",
    "HoldNotExpired",
    "HoldNotPending",
    "HoldRequest",
    "HoldStatus",
    "HoldTransition",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidRequest",
    "LedgerError",
    "Movement",
    "PersonalData",
    "Posting",
    "PostingAlreadyReversed",
    "PostingId",
    "PostingRequest",
    "RandomBytes",
    "ReservedExternalId",
    "Statement",
    "StatementTotals",
    "TooFewEntries",
    "UnbalancedPosting",
    "UnknownAccount",
    "UnknownCurrency",
    "UnknownCustomer",
    "UnknownHold",
    "UnknownPosting",
    "apply_posting",
    "close",
    "derived_external_id",
    "expire_hold",
    "freeze",
    "hold_fingerprint",
    "new_account_id",
    "new_customer_id",
    "new_hold_id",
    "new_posting_id",
    "open_account",
    "place_hold",
    "post_hold",
    "posting_fingerprint",
    "record_posting",
    "replay_hold",
    "replay_posting",
    "reverse",
    "signed_amount",
    "summarize_statement",
    "unfreeze",
    "validate_amount",
    "validate_caller_external_id",
    "validate_currency",
    "validate_description",
    "validate_external_id",
    "validate_metadata",
    "validate_posting",
    "void_hold",
]
