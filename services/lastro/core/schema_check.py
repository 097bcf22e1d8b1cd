"""A fast check for request bodies: code fastjsonschema generates from a schema.

:func:`fast_check` compiles a Draft 2020-12 schema that uses only keywords Draft 7
defines alike (every request body of Lastro's contracts but four) to a Python
function, with jsonschema's own format checks; ``core/openapi.py`` runs it first and
asks jsonschema, which names the offending fields, only when it fails. About 6 us
instead of 70 for a ledger posting.

Guarantee: a value the check accepts is one ``Draft202012Validator`` with its
format checker accepts (``tests/unit/test_contract_fast_check.py`` compares the two
on schemathesis-generated valid and invalid bodies of every contract). A schema
using anything else gets no fast check (None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import fastjsonschema
from jsonschema import Draft202012Validator

# Keywords a Draft 7 validator (fastjsonschema) applies exactly as Draft 2020-12 does,
# and annotations both ignore. ``enum`` and ``const`` only with strings: Python's
# ``in`` and ``==`` take True for 1, which JSON Schema does not. Not here, so such a
# schema is validated by jsonschema alone: ``$ref`` (a recursive one stays), the
# array form of ``items``, ``prefixItems``, ``unevaluated*``, ``dependent*``,
# ``uniqueItems`` (equality of 1 and 1.0), ``multipleOf`` (float division), ``$id``
# and anchors.
_SUBSCHEMA: Final = frozenset(
    {"additionalProperties", "items", "not", "if", "then", "else", "contains", "propertyNames"}
)
_SUBSCHEMA_MAPS: Final = frozenset({"properties", "patternProperties"})
_SUBSCHEMA_LISTS: Final = frozenset({"allOf", "anyOf", "oneOf"})
_PLAIN: Final = frozenset(
    {
        "type", "required", "pattern", "format", "minLength", "maxLength", "minimum",
        "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
        "maxItems", "minProperties", "maxProperties", "description", "title", "default",
        "examples", "example", "deprecated", "readOnly", "writeOnly",
    }
)  # fmt: skip
_FORMATS: Final = Draft202012Validator.FORMAT_CHECKER
# Every format fastjsonschema would check by itself: answered by jsonschema instead.
_DRAFT7_FORMATS: Final = tuple(fastjsonschema.draft07.CodeGeneratorDraft07.FORMAT_REGEXS)


def _portable(schema: Any, formats: set[str]) -> bool:
    """Whether ``schema`` uses only keywords both drafts define alike (see above);
    collects the format names it uses into ``formats``."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping):
        return False
    for keyword, value in schema.items():
        if keyword in _PLAIN:
            if keyword == "format":
                formats.add(str(value))
        elif keyword in ("enum", "const"):
            values = value if keyword == "enum" else [value]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                return False
        elif keyword in _SUBSCHEMA:
            if keyword == "items" and not isinstance(value, (Mapping, bool)):
                return False
            if not _portable(value, formats):
                return False
        elif keyword in _SUBSCHEMA_MAPS:
            if not all(_portable(member, formats) for member in value.values()):
                return False
        elif keyword in _SUBSCHEMA_LISTS:
            if not all(_portable(member, formats) for member in value):
                return False
        else:
            return False
    return True


def _format_check(name: str) -> Callable[[Any], bool]:
    return lambda value: _FORMATS.conforms(value, name)


def fast_check(schema: Any) -> Callable[[Any], Any] | None:
    """Generated code that accepts exactly what Draft 2020-12 accepts for ``schema``
    (raising ``fastjsonschema.JsonSchemaValueException`` otherwise), with
    jsonschema's format checks; None for a schema it cannot answer for."""
    formats: set[str] = set()
    if not _portable(schema, formats):
        return None
    known = formats | set(_FORMATS.checkers) | set(_DRAFT7_FORMATS) | {"regex"}
    document = {"$schema": "http://json-schema.org/draft-07/schema#", **schema}
    check: Callable[[Any], Any] = fastjsonschema.compile(
        document, formats={name: _format_check(name) for name in known}
    )
    return check


def passes(check: Callable[[Any], Any] | None, value: Any) -> bool:
    """Whether ``check`` (a :func:`fast_check`) accepts ``value``; False without one,
    so the caller asks jsonschema."""
    if check is None:
        return False
    try:
        check(value)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True
