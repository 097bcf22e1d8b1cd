"""HTTP handlers of the account service: parse, call one use case, render.

Requests reach these handlers already authenticated and validated against
``openapi.yaml`` (scopes included, see ``core/http.py``). A handler reads who
asks (:func:`_viewer`: customer tokens act for their own customers, operators
with ``accounts:admin`` or a ledger scope for any) and hands it to the use case,
which enforces ownership: another customer's account answers exactly like an
unknown one (404). Rule violations are :class:`~lastro.core.errors.DomainError`
subclasses rendered by the app factory; a KMS (or any dependency) outage is the
core's 503 ``dependency-unavailable`` (``core/outages.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from lastro.accounts import domain
from lastro.accounts.customers import Customers
from lastro.accounts.domain import (
    Account,
    AccountId,
    AccountKind,
    Balance,
    Customer,
    Direction,
    Entry,
    EntryRequest,
    Hold,
    HoldRequest,
    PersonalData,
    Posting,
    PostingRequest,
)
from lastro.accounts.events import account_fields, entry_fields, hold_fields, posting_fields
from lastro.accounts.postings import Recorded
from lastro.accounts.service import Ledger
from lastro.accounts.subject_requests import SubjectRequests
from lastro.core.http import PARAMS_KEY, PRINCIPAL_KEY, caller_of, json_body, json_response
from lastro.core.idempotency import REPLAYED_HEADER
from lastro.core.privacy import add_privacy_routes

LEDGER_KEY: Final = web.AppKey("ledger", Ledger)
CUSTOMERS_KEY: Final = web.AppKey("customers", Customers)
SUBJECTS_KEY: Final = web.AppKey("subject_requests", SubjectRequests)

ADMIN: Final = "accounts:admin"
LEDGER_READ: Final = "ledger:read"
LEDGER_WRITE: Final = "ledger:write"
OPERATOR_SCOPES: Final = frozenset({ADMIN, LEDGER_READ, LEDGER_WRITE})
OVERDRAFT_SCOPES: Final = frozenset({ADMIN, LEDGER_WRITE})
DEFAULT_PAGE: Final = 50

routes = web.RouteTableDef()

# ---------------------------------------------------------------- who asks


def _owner(request: web.Request) -> str:
    """The customer owner a customer route acts for: always the token's subject."""
    return request[PRINCIPAL_KEY].subject


def _viewer(request: web.Request, operators: frozenset[str] = OPERATOR_SCOPES) -> str | None:
    """The owner whose accounts the caller may address, or None for an operator."""
    principal = request[PRINCIPAL_KEY]
    return None if principal.scopes & operators else principal.subject


def _time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise domain.InvalidRequest(f"{field} is not an RFC 3339 time", field=field) from None
    if parsed.tzinfo is None:
        raise domain.InvalidRequest(f"{field} needs a UTC offset", field=field)
    return parsed


# ---------------------------------------------------------------- rendering


def _iso(value: datetime) -> str:
    return value.isoformat()


def balance_view(balance: Balance) -> dict[str, Any]:
    return {
        "object": "balance",
        "account_id": balance.account_id,
        "currency": balance.currency,
        "posted": balance.posted,
        "pending": balance.pending,
        "available": balance.available,
    }


def account_view(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "object": "account",
        "customer_id": account.customer_id,
        **account_fields(account.state),
        "balance": balance_view(Balance.of(account.state)),
        "metadata": dict(account.metadata),
        "created_at": _iso(account.created_at),
        "updated_at": _iso(account.updated_at),
    }


def entry_view(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "posting_id": entry.posting_id,
        **entry_fields(entry),
        "created_at": _iso(entry.created_at),
    }


def posting_view(posting: Posting) -> dict[str, Any]:
    return {"id": posting.id, "object": "posting", **posting_fields(posting)}


def hold_view(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "object": "hold",
        **hold_fields(hold),
        "description": hold.description,
        "metadata": dict(hold.metadata),
        "created_at": _iso(hold.created_at),
        "resolved_at": None if hold.resolved_at is None else _iso(hold.resolved_at),
    }


def customer_view(customer: Customer) -> dict[str, Any]:
    if customer.data is None:
        assert customer.erased_at is not None
        return {
            "id": customer.id,
            "object": "customer",
            "status": customer.status,
            "erased_at": _iso(customer.erased_at),
        }
    data = customer.data
    return {
        "id": customer.id,
        "object": "customer",
        "status": customer.status,
        "name": data.name,
        "email": data.email,
        "phone": data.phone,
        "document_number": data.document_number,
        "address": None if data.address is None else dict(data.address),
        "created_at": _iso(customer.created_at),
        "updated_at": _iso(customer.updated_at),
    }


def _recorded(recorded: Recorded[Any], view: dict[str, Any]) -> web.Response:
    """201 for a new record; 200 and ``Idempotent-Replayed: true`` for a replay."""
    if recorded.replayed:
        return json_response(view, 200, headers={REPLAYED_HEADER: "true"})
    return json_response(view, 201)


# ---------------------------------------------------------------- customers


@routes.post("/v1/customers")
async def create_customer(request: web.Request) -> web.Response:
    body = await json_body(request)
    data = PersonalData(
        name=body["name"],
        email=body["email"],
        document_number=body["document_number"],
        phone=body.get("phone"),
        address=body.get("address"),
    )
    customer = await request.app[CUSTOMERS_KEY].create(_owner(request), data, caller_of(request))
    return json_response(customer_view(customer), 201)


@routes.get("/v1/customers/{id}")
async def get_customer(request: web.Request) -> web.Response:
    customer = await request.app[CUSTOMERS_KEY].get(request.match_info["id"], _owner(request))
    return json_response(customer_view(customer))


@routes.patch("/v1/customers/{id}")
async def update_customer(request: web.Request) -> web.Response:
    changes = await json_body(request)
    customer = await request.app[CUSTOMERS_KEY].update_contact(
        request.match_info["id"], _owner(request), changes, caller_of(request)
    )
    return json_response(customer_view(customer))


@routes.delete("/v1/customers/{id}")
async def erase_customer(request: web.Request) -> web.Response:
    customer = await request.app[CUSTOMERS_KEY].erase(
        request.match_info["id"], _owner(request), caller_of(request)
    )
    return json_response(customer_view(customer))


@routes.get("/v1/customers/{id}/export")
async def export_customer(request: web.Request) -> web.Response:
    export = await request.app[CUSTOMERS_KEY].export(request.match_info["id"], _owner(request))
    return json_response(
        {
            "object": "customer_export",
            "customer": customer_view(export.customer),
            "accounts": [account_view(a) for a in export.accounts],
            "exported_at": _iso(export.exported_at),
        }
    )


@routes.get("/internal/v1/customers/{id}/contact")
async def customer_contact(request: web.Request) -> web.Response:
    contact = await request.app[CUSTOMERS_KEY].contact(request.match_info["id"])
    return json_response(
        {
            "object": "customer_contact",
            "customer_id": contact.customer_id,
            "owner": contact.owner,
            "email": contact.email,
            "phone": contact.phone,
        }
    )


# ---------------------------------------------------------------- accounts


@routes.post("/v1/accounts")
async def open_account(request: web.Request) -> web.Response:
    body = await json_body(request)
    account = await request.app[LEDGER_KEY].open_customer_account(
        body["customer_id"],
        body["currency"],
        caller_of(request),
        owner=_viewer(request, OVERDRAFT_SCOPES),
        overdraft_limit=body.get("overdraft_limit"),
        metadata=body.get("metadata"),
    )
    return json_response(account_view(account), 201)


@routes.get("/v1/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    accounts = await request.app[LEDGER_KEY].accounts_of_owner(_owner(request))
    return json_response({"object": "list", "data": [account_view(a) for a in accounts]})


@routes.get("/v1/accounts/{id}")
async def get_account(request: web.Request) -> web.Response:
    account = await request.app[LEDGER_KEY].get_account(
        request.match_info["id"], owner=_viewer(request)
    )
    return json_response(account_view(account))


@routes.get("/v1/accounts/{id}/balance")
async def get_balance(request: web.Request) -> web.Response:
    balance = await request.app[LEDGER_KEY].get_balance(
        request.match_info["id"], owner=_viewer(request)
    )
    return json_response(balance_view(balance))


@routes.get("/v1/accounts/{id}/entries")
async def list_entries(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    page = await request.app[LEDGER_KEY].history(
        request.match_info["id"],
        owner=_viewer(request),
        limit=params.get("limit", DEFAULT_PAGE),
        cursor=params.get("cursor"),
        since=_time(params["since"], "since") if "since" in params else None,
        until=_time(params["until"], "until") if "until" in params else None,
        direction=Direction(params["direction"]) if "direction" in params else None,
    )
    return json_response(
        {
            "object": "list",
            "data": [entry_view(e) for e in page.entries],
            "has_more": page.next_cursor is not None,
            "next_cursor": page.next_cursor,
        }
    )


@routes.get("/v1/accounts/{id}/statement")
async def get_statement(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    statement = await request.app[LEDGER_KEY].statement(
        request.match_info["id"],
        _time(params["start"], "start"),
        _time(params["end"], "end"),
        owner=_viewer(request),
    )
    totals = statement.totals
    return json_response(
        {
            "object": "statement",
            "account_id": statement.account_id,
            "currency": statement.currency,
            "start": _iso(statement.start),
            "end": _iso(statement.end),
            "opening_balance": totals.opening,
            "closing_balance": totals.closing,
            "total_debits": totals.total_debits,
            "total_credits": totals.total_credits,
            "entry_count": totals.entry_count,
            "entries": [entry_view(e) for e in statement.entries],
        }
    )


@routes.post("/v1/accounts/{id}/freeze")
async def freeze_account(request: web.Request) -> web.Response:
    account = await request.app[LEDGER_KEY].freeze(request.match_info["id"], caller_of(request))
    return json_response(account_view(account))


@routes.post("/v1/accounts/{id}/unfreeze")
async def unfreeze_account(request: web.Request) -> web.Response:
    account = await request.app[LEDGER_KEY].unfreeze(request.match_info["id"], caller_of(request))
    return json_response(account_view(account))


@routes.post("/v1/accounts/{id}/close")
async def close_account(request: web.Request) -> web.Response:
    closed = await request.app[LEDGER_KEY].close(
        request.match_info["id"], caller_of(request), owner=_viewer(request)
    )
    return json_response(account_view(closed))


# ---------------------------------------------------------------- internal


@routes.post("/internal/v1/accounts")
async def open_system_account(request: web.Request) -> web.Response:
    body = await json_body(request)
    account = await request.app[LEDGER_KEY].open_account(
        body["currency"],
        AccountKind.SYSTEM,
        caller_of(request),
        metadata={**body.get("metadata", {}), "purpose": body["purpose"]},
    )
    return json_response(account_view(account), 201)


def _posting_request(body: Mapping[str, Any]) -> PostingRequest:
    return PostingRequest(
        external_id=body["external_id"],
        entries=tuple(
            EntryRequest(
                AccountId(e["account_id"]), Direction(e["direction"]), e["amount"], e["currency"]
            )
            for e in body["entries"]
        ),
        description=body.get("description", ""),
        metadata=body.get("metadata", {}),
    )


@routes.post("/internal/v1/postings")
async def create_posting(request: web.Request) -> web.Response:
    request_ = _posting_request(await json_body(request))
    recorded = await request.app[LEDGER_KEY].post_posting(request_, caller_of(request))
    return _recorded(recorded, posting_view(recorded.item))


@routes.get("/internal/v1/postings/{id}")
async def get_posting(request: web.Request) -> web.Response:
    posting = await request.app[LEDGER_KEY].get_posting(request.match_info["id"])
    return json_response(posting_view(posting))


@routes.post("/internal/v1/postings/{id}/reverse")
async def reverse_posting(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    recorded = await request.app[LEDGER_KEY].reverse_posting(
        request.match_info["id"], caller_of(request), description=body.get("description")
    )
    return _recorded(recorded, posting_view(recorded.item))


@routes.post("/internal/v1/holds")
async def place_hold(request: web.Request) -> web.Response:
    body = await json_body(request)
    hold_request = HoldRequest(
        external_id=body["external_id"],
        account_id=AccountId(body["account_id"]),
        counterparty_id=AccountId(body["counterparty_id"]),
        amount=body["amount"],
        currency=body["currency"],
        expires_at=_time(body["expires_at"], "expires_at"),
        description=body.get("description", ""),
        metadata=body.get("metadata", {}),
    )
    recorded = await request.app[LEDGER_KEY].place_hold(hold_request, caller_of(request))
    return _recorded(recorded, hold_view(recorded.item))


@routes.get("/internal/v1/holds/{id}")
async def get_hold(request: web.Request) -> web.Response:
    return json_response(
        hold_view(await request.app[LEDGER_KEY].get_hold(request.match_info["id"]))
    )


@routes.post("/internal/v1/holds/{id}/post")
async def post_hold(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    hold = await request.app[LEDGER_KEY].post_hold(
        request.match_info["id"], caller_of(request), amount=body.get("amount")
    )
    return json_response(hold_view(hold))


@routes.post("/internal/v1/holds/{id}/void")
async def void_hold(request: web.Request) -> web.Response:
    hold = await request.app[LEDGER_KEY].void_hold(request.match_info["id"], caller_of(request))
    return json_response(hold_view(hold))


# ---------------------------------------------------------------- privacy

add_privacy_routes(routes)


@routes.post("/v1/privacy/exports")
async def export_subject(request: web.Request) -> web.Response:
    body = await json_body(request)
    bundle = await request.app[SUBJECTS_KEY].export(body["customer_id"], caller_of(request))
    return json_response(bundle)


@routes.post("/v1/privacy/erasures")
async def erase_subject(request: web.Request) -> web.Response:
    body = await json_body(request)
    caller = replace(caller_of(request), reason=body["reason"])
    certificate = await request.app[SUBJECTS_KEY].erase(body["customer_id"], body["reason"], caller)
    return json_response(certificate, 201)


@routes.get("/v1/privacy/erasures/{id}")
async def get_erasure_certificate(request: web.Request) -> web.Response:
    return json_response(await request.app[SUBJECTS_KEY].certificate(request.match_info["id"]))


@routes.post("/v1/privacy/erasures/{id}/retry")
async def retry_erasure(request: web.Request) -> web.Response:
    certificate = await request.app[SUBJECTS_KEY].retry(
        request.match_info["id"], caller_of(request)
    )
    return json_response(certificate)
