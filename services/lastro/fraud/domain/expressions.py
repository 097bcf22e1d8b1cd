"""The CEL environment rule expressions are compiled in and evaluated against.

Rules are CEL (the Common Expression Language Kubernetes uses), compiled by
cel-cpp through ``cel-expr-python`` (docs/decisions/0006-cel-engine.md): a
real type checker over typed variables, so a misspelt feature or a comparison
of a number with a string is rejected when the rule is written, not when it
first meets a transaction. The variables:

``txn``       the screening request (``lastro.fraud.v1.Transaction``: the fields of
              docs/interfaces.md, ``occurred_at`` a timestamp, ``location`` a
              message with ``lat``/``lon``; absent optional strings read as ``""``)
``features``  :class:`lastro.fraud.domain.features.Features` (``lastro.fraud.v1.Features``)
``now``       the screening time, a timestamp

An expression can only read these values and call CEL's standard functions: it
cannot reach Python objects, attributes or modules. Its cost is bounded by
cel-cpp's limits (parser nesting depth 32, 100 000 code points, 10 000
comprehension iterations per evaluation) and by :data:`MAX_EXPRESSION_LENGTH`
and :data:`MAX_COMPREHENSIONS` checked here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from lastro.fraud.domain.features import FEATURE_TYPES, Features
from lastro.fraud.domain.transactions import Transaction

PACKAGE: Final = "lastro.fraud.v1"
MAX_EXPRESSION_LENGTH: Final = 2048
MAX_COMPREHENSIONS: Final = 2

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS: Final = {
    int: _F.TYPE_INT64,
    float: _F.TYPE_DOUBLE,
    bool: _F.TYPE_BOOL,
    str: _F.TYPE_STRING,
}
TRANSACTION_FIELDS: Final[dict[str, type]] = {
    "transaction_id": str,
    "type": str,
    "amount": int,
    "currency": str,
    "customer_id": str,
    "source_account_id": str,
    "destination_account_id": str,
    "counterparty": str,
    "device_id": str,
    "ip": str,
    "country": str,
}
"""The scalar fields of ``txn``; ``location`` and ``occurred_at`` are messages."""

_COMPREHENSION = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(")


class ExpressionError(ValueError):
    """A rule expression that does not compile; the message is the CEL error text."""


def _message(fdp: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    message: descriptor_pb2.DescriptorProto = fdp.message_type.add(name=name)
    return message


def _field(message: descriptor_pb2.DescriptorProto, name: str, **kwargs: Any) -> None:
    number = len(message.field) + 1
    message.field.add(name=name, number=number, label=_F.LABEL_OPTIONAL, **kwargs)


def _schema() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="lastro/fraud/v1/screening.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[timestamp_pb2.DESCRIPTOR.name],
    )
    location = _message(fdp, "Location")
    _field(location, "lat", type=_F.TYPE_DOUBLE)
    _field(location, "lon", type=_F.TYPE_DOUBLE)
    txn = _message(fdp, "Transaction")
    for name, kind in TRANSACTION_FIELDS.items():
        _field(txn, name, type=_SCALARS[kind])
    _field(txn, "location", type=_F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Location")
    _field(txn, "occurred_at", type=_F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    features = _message(fdp, "Features")
    for name, kind in FEATURE_TYPES.items():
        _field(features, name, type=_SCALARS[kind])
    return fdp


def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    pool.Add(_schema())
    return pool


_POOL: Final = _pool()
_TXN_CLASS: Final = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.Transaction")
)
_LOCATION_CLASS: Final = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.Location")
)
_FEATURES_CLASS: Final = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.Features")
)
_TIMESTAMP_CLASS: Final = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("google.protobuf.Timestamp")
)
_ENV: Final = cel.NewEnv(
    _POOL,
    variables={
        "txn": cel.Type(f"{PACKAGE}.Transaction"),
        "features": cel.Type(f"{PACKAGE}.Features"),
        "now": cel.Type.TIMESTAMP,
    },
)
_FEATURE_NAMES: Final = tuple(FEATURE_TYPES)
_FEATURE_REF: Final = re.compile(r"\bfeatures\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


def _clean(error: Exception) -> str:
    """cel-cpp's status text without the status-code wrapper around it."""
    text = str(error).strip()
    text = re.sub(r"^[A-Z_]+: ", "", text)
    text = re.sub(r"\s*\[[A-Z_]+\]$", "", text)
    return text.removeprefix("ERROR: ")


class CompiledExpression:
    """A type-checked boolean CEL program and the feature names it reads."""

    __slots__ = ("_program", "features", "source")

    def __init__(self, source: str) -> None:
        if not source.strip():
            raise ExpressionError("the expression is empty")
        if len(source) > MAX_EXPRESSION_LENGTH:
            raise ExpressionError(
                f"the expression is {len(source)} characters; at most {MAX_EXPRESSION_LENGTH}"
            )
        comprehensions = len(_COMPREHENSION.findall(source))
        if comprehensions > MAX_COMPREHENSIONS:
            raise ExpressionError(
                f"the expression uses {comprehensions} comprehensions (all, exists, exists_one,"
                f" map, filter); at most {MAX_COMPREHENSIONS}"
            )
        try:
            program = _ENV.compile(source)
        except RuntimeError as exc:
            raise ExpressionError(_clean(exc)) from None
        if program.return_type() != cel.Type.BOOL:
            raise ExpressionError(
                f"the expression must be a bool; it is {program.return_type().name().lower()}"
            )
        self.source = source
        self._program = program
        referenced = set(_FEATURE_REF.findall(source))
        self.features: tuple[str, ...] = tuple(n for n in _FEATURE_NAMES if n in referenced)

    def matches(self, bindings: Bindings) -> bool:
        """True if the expression holds; raises EvaluationError if it fails to evaluate."""
        try:
            result = self._program.eval(bindings.activation)
        except RuntimeError as exc:
            raise EvaluationError(_clean(exc)) from None
        if result.type() != cel.Type.BOOL:
            raise EvaluationError(_clean(Exception(str(result.value()))))
        return bool(result.value())


class EvaluationError(RuntimeError):
    """A compiled expression failed on these values (division by zero, overflow, budget...)."""


class Bindings:
    """The values of ``txn``, ``features`` and ``now`` for one screening, built once."""

    __slots__ = ("activation",)

    def __init__(self, txn: Transaction, features: Features, now: datetime) -> None:
        location = txn.location
        message = _TXN_CLASS(
            transaction_id=txn.transaction_id,
            type=txn.type.value,
            amount=txn.amount,
            currency=txn.currency,
            customer_id=txn.customer_id,
            source_account_id=txn.source_account_id or "",
            destination_account_id=txn.destination_account_id or "",
            counterparty=txn.counterparty or "",
            device_id=txn.device_id or "",
            ip=txn.ip or "",
            country=txn.country or "",
            occurred_at=_timestamp(txn.occurred_at),
            location=_LOCATION_CLASS(lat=location.lat, lon=location.lon) if location else None,
        )
        values = _FEATURES_CLASS(**{name: getattr(features, name) for name in _FEATURE_NAMES})
        self.activation = _ENV.Activation(
            {"txn": message, "features": values, "now": now.astimezone(UTC)}
        )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(moment: datetime) -> Any:
    delta = moment - _EPOCH
    return _TIMESTAMP_CLASS(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )
