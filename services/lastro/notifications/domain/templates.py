"""Messages: one template per kind and locale (``en``, ``pt-BR``), rendered as an
e-mail (subject, plain text, HTML) or an SMS, and the JSON a webhook carries.

Values are prepared once per message: amounts formatted for the locale with the
currency's own number of decimals (``core.money`` gives the exact decimal, Babel
the locale's symbols and separators; no float anywhere), account ids masked to
their last four characters, times shown in the customer's time zone. The HTML part
escapes every value. Messages carry nothing personal beyond what they need: no
names, no full account ids, no contact details.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.numbers import format_currency

from lastro.core.money import Money
from lastro.notifications.domain.kinds import Kind

MASK: Final = "••••"
# Facts that messages to the customer may show but that webhooks never carry.
MESSAGE_ONLY_FACTS: Final = frozenset({"ip", "user_agent"})


@dataclass(frozen=True)
class Email:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class Template:
    subject: str
    paragraphs: tuple[str, ...]
    sms: str


def _babel_locale(locale: str) -> str:
    return locale.replace("-", "_")


def format_amount(amount: int, currency: str, locale: str) -> str:
    """``125000, "BRL", "pt-BR"`` → ``R$ 1.250,00``; exact, with the currency's decimals."""
    exact = Decimal(Money(amount, currency).to_decimal_string())
    return str(format_currency(exact, currency, locale=_babel_locale(locale)))


def mask_account(account_id: str | None) -> str:
    """An account id reduced to its last four characters: ``••••CDEF``."""
    if not account_id:
        return MASK
    return MASK + account_id[-4:]


def format_time(moment: datetime, timezone: str, locale: str) -> str:
    return str(
        format_datetime(
            moment, "d MMM y, HH:mm zzz", tzinfo=ZoneInfo(timezone), locale=_babel_locale(locale)
        )
    )


_LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        "transfer": "transfer",
        "fx_transfer": "currency exchange transfer",
        "card_payment": "card payment",
        "payout": "payout",
        "deposit": "deposit",
    },
    "pt-BR": {
        "transfer": "transferência",
        "fx_transfer": "transferência com câmbio",
        "card_payment": "pagamento com cartão",
        "payout": "repasse",
        "deposit": "depósito",
    },
}

_REASONS: Final[Mapping[str, Mapping[str, str]]] = {
    "en": {
        "insufficient_funds": "insufficient funds",
        "card_declined": "the card was declined",
        "expired_card": "the card has expired",
        "processing_error": "a processing error at the card network",
        "account_frozen": "the account is frozen",
        "fraud_suspected": "it looked like fraud",
    },
    "pt-BR": {
        "insufficient_funds": "saldo insuficiente",
        "card_declined": "o cartão foi recusado",
        "expired_card": "o cartão está vencido",
        "processing_error": "um erro de processamento na bandeira",
        "account_frozen": "a conta está bloqueada",
        "fraud_suspected": "suspeita de fraude",
    },
}

_NOT_YOU: Final = {
    "en": "If this was not you, change your password and contact us at once.",
    "pt-BR": "Se não foi você, troque sua senha e fale conosco imediatamente.",
}

TEMPLATES: Final[Mapping[Kind, Mapping[str, Template]]] = {
    Kind.TRANSACTION_SUCCEEDED: {
        "en": Template(
            "Transaction completed: {amount}",
            (
                "Your {label} of {amount} from account {account} was completed on {time}.",
                "Reference: {transaction_id}.",
            ),
            "Lastro: {label} of {amount} from account {account} completed. Ref {short_ref}.",
        ),
        "pt-BR": Template(
            "Transação concluída: {amount}",
            (
                "Transação concluída: {label} de {amount} da conta {account} em {time}.",
                "Referência: {transaction_id}.",
            ),
            "Lastro: {label} de {amount} da conta {account} concluída. Ref {short_ref}.",
        ),
    },
    Kind.TRANSACTION_DECLINED: {
        "en": Template(
            "Transaction declined: {amount}",
            (
                "Your {label} of {amount} from account {account} was declined: {reason}.",
                "No money left your account. Reference: {transaction_id}.",
            ),
            "Lastro: {label} of {amount} from account {account} declined ({reason}).",
        ),
        "pt-BR": Template(
            "Transação recusada: {amount}",
            (
                "Transação recusada: {label} de {amount} da conta {account}. Motivo: {reason}.",
                "Nenhum valor saiu da sua conta. Referência: {transaction_id}.",
            ),
            "Lastro: {label} de {amount} da conta {account} recusada ({reason}).",
        ),
    },
    Kind.TRANSACTION_FAILED: {
        "en": Template(
            "Transaction failed: {amount}",
            (
                "Your {label} of {amount} from account {account} could not be completed: {reason}.",
                "Any amount reserved was released. Reference: {transaction_id}.",
            ),
            "Lastro: {label} of {amount} from account {account} failed ({reason}).",
        ),
        "pt-BR": Template(
            "Transação não concluída: {amount}",
            (
                "Não foi possível concluir: {label} de {amount} da conta {account}. "
                "Motivo: {reason}.",
                "Qualquer valor reservado foi liberado. Referência: {transaction_id}.",
            ),
            "Lastro: {label} de {amount} da conta {account} não concluída ({reason}).",
        ),
    },
    Kind.TRANSACTION_REFUNDED: {
        "en": Template(
            "Refund of {amount}",
            (
                "A refund of {amount} was made to account {account} on {time}.",
                "Reference: {transaction_id}.",
            ),
            "Lastro: refund of {amount} to account {account}. Ref {short_ref}.",
        ),
        "pt-BR": Template(
            "Estorno de {amount}",
            (
                "Um estorno de {amount} foi feito na conta {account} em {time}.",
                "Referência: {transaction_id}.",
            ),
            "Lastro: estorno de {amount} na conta {account}. Ref {short_ref}.",
        ),
    },
    Kind.PAYOUT_SENT: {
        "en": Template(
            "Payout of {amount} sent",
            (
                "A payout of {amount} from account {account} was sent on {time}.",
                "Reference: {transaction_id}.",
            ),
            "Lastro: payout of {amount} from account {account} sent. Ref {short_ref}.",
        ),
        "pt-BR": Template(
            "Repasse de {amount} enviado",
            (
                "Um repasse de {amount} da conta {account} foi enviado em {time}.",
                "Referência: {transaction_id}.",
            ),
            "Lastro: repasse de {amount} da conta {account} enviado. Ref {short_ref}.",
        ),
    },
    Kind.FRAUD_ALERT_RAISED: {
        "en": Template(
            "Security alert on your account",
            (
                "We noticed unusual activity ({typology}) on account {account} on {time}.",
                "If this was not you, contact us at once. Alert: {alert_id}.",
            ),
            "Lastro: unusual activity on account {account}. Not you? Contact us now.",
        ),
        "pt-BR": Template(
            "Alerta de segurança na sua conta",
            (
                "Detectamos uma atividade incomum ({typology}) na conta {account} em {time}.",
                "Se não foi você, fale conosco imediatamente. Alerta: {alert_id}.",
            ),
            "Lastro: atividade incomum na conta {account}. Não foi você? Fale conosco.",
        ),
    },
    Kind.ACCOUNT_FROZEN: {
        "en": Template(
            "Your account {account} was frozen",
            (
                "Account {account} was frozen on {time}: payments out of it are paused, "
                "money in still arrives.",
                "Contact us to find out more.",
            ),
            "Lastro: account {account} was frozen. Contact us to find out more.",
        ),
        "pt-BR": Template(
            "Sua conta {account} foi bloqueada",
            (
                "A conta {account} foi bloqueada em {time}: saídas estão suspensas, "
                "entradas continuam chegando.",
                "Fale conosco para saber mais.",
            ),
            "Lastro: a conta {account} foi bloqueada. Fale conosco para saber mais.",
        ),
    },
    Kind.LOGIN_NEW_DEVICE: {
        "en": Template(
            "New sign-in to your Lastro account",
            (
                "Your account was signed in to from a new device ({user_agent}, "
                "address {ip}) on {time}.",
                _NOT_YOU["en"],
            ),
            "Lastro: new sign-in from a new device. Not you? Change your password now.",
        ),
        "pt-BR": Template(
            "Novo acesso à sua conta Lastro",
            (
                "Sua conta foi acessada de um novo dispositivo ({user_agent}, "
                "endereço {ip}) em {time}.",
                _NOT_YOU["pt-BR"],
            ),
            "Lastro: novo acesso de um novo dispositivo. Não foi você? Troque sua senha.",
        ),
    },
    Kind.TOTP_ENABLED: {
        "en": Template(
            "Two-factor authentication enabled",
            ("Two-factor authentication was enabled on your account on {time}.", _NOT_YOU["en"]),
            "Lastro: two-factor authentication enabled. Not you? Contact us now.",
        ),
        "pt-BR": Template(
            "Verificação em duas etapas ativada",
            (
                "A verificação em duas etapas foi ativada na sua conta em {time}.",
                _NOT_YOU["pt-BR"],
            ),
            "Lastro: verificação em duas etapas ativada. Não foi você? Fale conosco.",
        ),
    },
    Kind.TOTP_DISABLED: {
        "en": Template(
            "Two-factor authentication disabled",
            (
                "Two-factor authentication was disabled on your account on {time}.",
                _NOT_YOU["en"],
            ),
            "Lastro: two-factor authentication disabled. Not you? Contact us now.",
        ),
        "pt-BR": Template(
            "Verificação em duas etapas desativada",
            (
                "A verificação em duas etapas foi desativada na sua conta em {time}.",
                _NOT_YOU["pt-BR"],
            ),
            "Lastro: verificação em duas etapas desativada. Não foi você? Fale conosco.",
        ),
    },
    Kind.ENDPOINT_DISABLED: {
        "en": Template(
            "Webhook endpoint {endpoint_id} disabled",
            (
                "We disabled your webhook endpoint {endpoint_id} ({host}) on {time} after "
                "{failures} failed delivery attempts in a row.",
                "Fix the receiver, enable the endpoint again and replay the dead-lettered "
                "deliveries (POST /v1/deliveries/{{id}}/replay).",
            ),
            "Lastro: webhook endpoint {endpoint_id} disabled after {failures} failures.",
        ),
        "pt-BR": Template(
            "Endpoint de webhook {endpoint_id} desativado",
            (
                "Desativamos seu endpoint de webhook {endpoint_id} ({host}) em {time} após "
                "{failures} tentativas de entrega com falha seguidas.",
                "Corrija o receptor, ative o endpoint de novo e reenvie as entregas da fila "
                "de mensagens mortas (POST /v1/deliveries/{{id}}/replay).",
            ),
            "Lastro: endpoint de webhook {endpoint_id} desativado após {failures} falhas.",
        ),
    },
}


def _reason(code: Any, locale: str) -> str:
    if not isinstance(code, str) or not code:
        return _REASONS[locale].get("processing_error", "")
    return _REASONS[locale].get(code, code.replace("_", " "))


def message_values(
    facts: Mapping[str, Any], occurred_at: datetime, locale: str, timezone: str
) -> dict[str, str]:
    """Every placeholder a template of ``locale`` may use, from an occurrence's facts."""
    values: dict[str, str] = {"time": format_time(occurred_at, timezone, locale)}
    amount, currency = facts.get("amount"), facts.get("currency")
    if isinstance(amount, int) and isinstance(currency, str):
        values["amount"] = format_amount(amount, currency, locale)
    values["account"] = mask_account(facts.get("source_account_id") or facts.get("account_id"))
    kind = facts.get("type")
    values["label"] = _LABELS[locale].get(kind, str(kind)) if isinstance(kind, str) else ""
    values["reason"] = _reason(facts.get("reason"), locale)
    transaction_id = facts.get("transaction_id")
    if isinstance(transaction_id, str):
        values["transaction_id"] = transaction_id
        values["short_ref"] = transaction_id[-6:]
    for name in ("typology", "alert_id", "ip", "user_agent", "endpoint_id", "failures"):
        if facts.get(name) is not None:
            values[name] = str(facts[name])
    url = facts.get("url")
    if isinstance(url, str):
        values["host"] = urlsplit(url).hostname or url
    return values


def _fill(text: str, values: Mapping[str, str], escape: Callable[[str], str]) -> str:
    return text.format_map({name: escape(value) for name, value in values.items()})


_HTML_PAGE: Final = (
    '<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
    '</head><body style="font-family:sans-serif;max-width:36em">'
    '<h1 style="font-size:1.2em">{title}</h1>{body}'
    '<p style="color:#666;font-size:.85em">Lastro</p></body></html>'
)


def render_email(
    kind: Kind, locale: str, facts: Mapping[str, Any], occurred_at: datetime, timezone: str
) -> Email:
    """Subject, plain text and HTML of ``kind`` in ``locale`` (values escaped in HTML)."""
    template = TEMPLATES[kind][locale]
    values = message_values(facts, occurred_at, locale, timezone)
    subject = _fill(template.subject, values, str)
    text = "\n\n".join(_fill(p, values, str) for p in template.paragraphs) + "\n"
    body = "".join(f"<p>{_fill(p, values, html.escape)}</p>" for p in template.paragraphs)
    page = _HTML_PAGE.format(lang=locale, title=html.escape(subject), body=body)
    return Email(subject, text, page)


def render_sms(
    kind: Kind, locale: str, facts: Mapping[str, Any], occurred_at: datetime, timezone: str
) -> str:
    template = TEMPLATES[kind][locale]
    return _fill(template.sms, message_values(facts, occurred_at, locale, timezone), str)


def webhook_payload(
    kind: Kind, event_id: str, occurred_at: datetime, facts: Mapping[str, Any]
) -> dict[str, Any]:
    """The Standard Webhooks body: ``{"type", "timestamp", "data"}``; ``data`` holds
    the event id and the facts, without the ones only customers see."""
    data = {k: v for k, v in facts.items() if k not in MESSAGE_ONLY_FACTS}
    return {
        "type": kind.value,
        "timestamp": occurred_at.isoformat(),
        "data": {"event_id": event_id, **data},
    }
