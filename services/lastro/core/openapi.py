"""A service's ``openapi.yaml`` as the executable contract of its HTTP API.

:class:`ApiContract` indexes the operations of an OpenAPI 3.1 document by
``(METHOD, path template)``, which is exactly aiohttp's canonical resource path
(``/v1/accounts/{id}``), and checks requests against it:

* path and query parameters with a schema are coerced from text (integer, number,
  boolean, arrays of those) and validated; missing required ones are errors;
* a JSON ``requestBody`` is parsed (malformed JSON → 400 ``malformed-json``; valid
  JSON with a NUL character or a lone surrogate in a string → 422, as no text column
  can hold them) and validated with JSON Schema Draft 2020-12, ``$ref`` into
  ``components`` included.

Validators are built once, at load, over schemas whose local ``$ref``s are
already replaced by their targets (a ``$ref`` with sibling keywords becomes one
more ``allOf`` member, which 2020-12 defines identically), so a request does not
pay for reference resolution. A reference back into itself stays a ``$ref``, and
a schema that declares its own identifiers (``$id``, anchors, dynamic references)
is validated as written.

A request body is first checked by code generated from its schema
(``core/schema_check.py``: about 6 us instead of 70 for a ledger posting, for every
schema written with keywords Draft 7 defines alike); only a body that fails that
check is validated again by jsonschema, which names the offending fields.

Every failure is a :class:`~lastro.core.problems.Problem`; validation failures are
one 422 listing each offending field, never the offending value (it may be PII).

:meth:`ApiContract.load` completes the document first with the answers every Lastro
route can give for platform reasons and the ISO 4217 codes of ``format: iso4217``
strings (``core/platform_answers.py``); the served ``/openapi.json`` is that
completed document.
The operation's effective ``security`` (its own, else the document's) is exposed as
a tuple of scope sets, one per alternative; see ``core/http.py`` for how it is enforced.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from aiohttp import web
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from lastro.core.platform_answers import METHODS, with_platform_answers
from lastro.core.problems import Problem, validation_problem
from lastro.core.schema_check import fast_check, passes

_DOC_URI: Final = "urn:lastro:openapi"
BODY_FIELD: Final = "body"


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _at(doc: Mapping[str, Any], pointer: str) -> Any:
    """The node at a JSON Pointer (RFC 6901) inside ``doc``."""
    node: Any = doc
    for token in pointer.split("/")[1:]:
        key = token.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def _deref(doc: Mapping[str, Any], node: Any, pointer: str) -> tuple[Any, str]:
    """Follow local ``$ref``s of a parameter or request body object."""
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref: str = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local references are supported, got {ref!r}")
        pointer = ref[1:]
        node = _at(doc, pointer)
    return node, pointer


# Keywords that give a schema its own base URI or anchors: inlining could change
# what their references mean, so such a schema is left to the resolver.
_IDENTIFIERS: Final = frozenset(
    {"$id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveAnchor", "$recursiveRef"}
)


class _Unsafe(Exception):
    """The schema declares identifiers or non-local references; validate it as written."""


def _inline_refs(doc: Mapping[str, Any], node: Any, expanding: tuple[str, ...]) -> Any:
    """``node`` with every local ``$ref`` replaced by its (inlined) target.

    A reference to a pointer that is being expanded (recursion) is kept, made
    absolute (``urn:lastro:openapi#/...``) for the registry to resolve.
    """
    if isinstance(node, list):
        return [_inline_refs(doc, item, expanding) for item in node]
    if not isinstance(node, Mapping):
        return node
    if _IDENTIFIERS & node.keys():
        raise _Unsafe
    ref = node.get("$ref")
    rest = {k: _inline_refs(doc, v, expanding) for k, v in node.items() if k != "$ref"}
    if not isinstance(ref, str):
        return rest
    if not ref.startswith("#/"):
        raise _Unsafe
    pointer = ref[1:]
    if pointer in expanding:
        return {**rest, "$ref": f"{_DOC_URI}#{pointer}"}
    target = _inline_refs(doc, _at(doc, pointer), (*expanding, pointer))
    if not rest:
        return target
    return {**rest, "allOf": [*rest.get("allOf", ()), target]}


def _field(path: Iterable[str | int], prefix: str = "") -> str:
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out or BODY_FIELD


_BOUND_WORDS: Final = {
    "minimum": "must be >= {}",
    "maximum": "must be <= {}",
    "exclusiveMinimum": "must be > {}",
    "exclusiveMaximum": "must be < {}",
    "multipleOf": "must be a multiple of {}",
    "minLength": "must be at least {} characters long",
    "maxLength": "must be at most {} characters long",
    "pattern": "must match the pattern {}",
    "format": "must be a valid {}",
    "type": "must be of type {}",
    "minItems": "must have at least {} items",
    "maxItems": "must have at most {} items",
    "minProperties": "must have at least {} members",
    "maxProperties": "must have at most {} members",
}
_FIXED_WORDS: Final = {
    "uniqueItems": "must not contain duplicates",
    "oneOf": "must match exactly one of the allowed shapes",
    "anyOf": "must match one of the allowed shapes",
    "not": "is not allowed in this form",
}


def _describe(error: ValidationError) -> str:
    """What is wrong, without echoing the submitted value."""
    kind = str(error.validator)
    expected: Any = error.validator_value
    if kind == "enum":
        return "must be one of: " + ", ".join(map(str, expected))
    if kind == "const":
        return f"must be {expected!r}"
    if kind == "not" and isinstance(expected, Mapping) and set(expected) == {"pattern"}:
        return f"must not match the pattern {expected['pattern']}"
    if kind in _BOUND_WORDS:
        shown = " or ".join(expected) if isinstance(expected, list) else expected
        return _BOUND_WORDS[kind].format(shown)
    return _FIXED_WORDS.get(kind, f"is invalid ({kind})")


def field_errors(errors: Iterable[ValidationError], prefix: str = "") -> list[dict[str, str]]:
    """One ``{"field", "detail"}`` per offending field, deduplicated, in stable order."""
    found: dict[tuple[str, str], None] = {}
    for error in errors:
        path = list(error.absolute_path)
        instance = error.instance
        required: Any = error.validator_value
        if error.validator == "required" and isinstance(instance, Mapping):
            for name in required:
                if name not in instance:
                    found[(_field([*path, name], prefix), "is required")] = None
        elif error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(
            instance, Mapping
        ):
            known = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
            for name in instance:
                if name not in known:
                    found[(_field([*path, name], prefix), "is not allowed")] = None
        else:
            found[(_field(path, prefix), _describe(error))] = None
    return [{"field": f, "detail": d} for f, d in found]


def _boolean(text: str) -> bool:
    return {"true": True, "false": False}[text.lower()]


_COERCE: Final[dict[str, Callable[[str], Any]]] = {
    "integer": int,
    "number": float,
    "boolean": _boolean,
}


@dataclass(frozen=True)
class Parameter:
    name: str
    location: str
    required: bool
    validator: Draft202012Validator | None
    type: str | None
    item_type: str | None
    explode: bool

    def read(self, request: web.Request) -> tuple[bool, Any]:
        """(present, coerced value); raises ValueError/KeyError when text does not coerce."""
        source: Mapping[str, str] = request.match_info if self.location == "path" else request.query
        if self.name not in source:
            return False, None
        if self.type == "array":
            raw: list[str] = (
                request.query.getall(self.name)
                if self.location == "query" and self.explode
                else source[self.name].split(",")
            )
            coerce = _COERCE.get(self.item_type or "", str)
            return True, [coerce(v) for v in raw]
        return True, _COERCE.get(self.type or "", str)(source[self.name])


@dataclass(frozen=True)
class Operation:
    """One ``(method, path)`` of the contract."""

    method: str
    path: str
    parameters: tuple[Parameter, ...]
    body: Draft202012Validator | None
    body_required: bool
    # None: no requirement declared; otherwise the alternatives, each the set of
    # scopes one requirement object lists (``{bearer: []}`` is an empty set that
    # still needs a token).
    security: tuple[frozenset[str], ...] | None
    # ``security: []`` or an empty ``{}`` alternative: no token needed.
    public: bool
    # The media types the requestBody declares (``application/x-www-form-urlencoded``...).
    media_types: frozenset[str] = frozenset()
    # ``fast_check`` of the body schema: accepts what ``body`` accepts, faster.
    body_check: Callable[[Any], Any] | None = None

    def check_media_type(self, request: web.Request) -> None:
        """A body sent as a media type the operation does not declare is refused with
        415 before anything parses it (a malformed ``multipart/form-data`` without a
        boundary must never reach a form parser); JSON bodies are checked by
        :meth:`read_body`."""
        if self.body is not None or not self.media_types or not request.body_exists:
            return
        if not any(_media_matches(declared, request.content_type) for declared in self.media_types):
            raise Problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "Send the request body as " + " or ".join(sorted(self.media_types)) + ".",
            )

    def read_params(self, request: web.Request) -> dict[str, Any]:
        """Coerced, validated path and query parameters; raises a 422 Problem."""
        values: dict[str, Any] = {}
        errors: list[dict[str, str]] = []
        for param in self.parameters:
            try:
                present, value = param.read(request)
            except (ValueError, KeyError):
                expected = param.item_type if param.type == "array" else param.type
                errors.append({"field": param.name, "detail": f"must be of type {expected}"})
                continue
            if not present:
                if param.required:
                    errors.append({"field": param.name, "detail": "is required"})
                continue
            if param.validator is not None:
                errors.extend(field_errors(param.validator.iter_errors(value), param.name))
            values[param.name] = value
        if errors:
            raise validation_problem(errors)
        return values

    async def read_body(self, request: web.Request) -> Any:
        """The parsed, schema-valid JSON body (None when absent and optional)."""
        raw = await request.read()
        if not raw.strip():
            if self.body_required:
                raise validation_problem([{"field": BODY_FIELD, "detail": "is required"}])
            return None
        if not _is_json(request.content_type):
            raise Problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "Send the request body as application/json.",
            )
        body = parse_json(raw)
        assert self.body is not None
        if passes(self.body_check, body):
            return body
        errors = field_errors(self.body.iter_errors(body))
        if errors:
            raise validation_problem(errors)
        return body


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _media_matches(declared: str, sent: str) -> bool:
    """``sent`` (parameters stripped, as aiohttp gives it) is the declared media type,
    or falls under a declared range (``*/*``, ``multipart/*``); JSON as :func:`_is_json`."""
    declared = declared.split(";", 1)[0].strip().lower()
    if declared == "application/json":
        return _is_json(sent)
    if declared == "*/*":
        return True
    if declared.endswith("/*"):
        return sent.startswith(declared[:-1])
    return sent == declared


_NUL: Final = "must not contain NUL characters"
_SURROGATE: Final = "must be valid Unicode (no lone surrogate escapes)"


def _unstorable(text: str) -> str | None:
    if "\x00" in text:
        return _NUL
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE
    return None


def unstorable_fields(value: Any) -> list[dict[str, str]]:
    """One ``{"field", "detail"}`` per string (or member name) no text column can hold:
    a NUL character, or a lone surrogate escape such as ``"\\ud800"``."""
    errors: list[dict[str, str]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, member in item.items():
                reason = _unstorable(key)
                if reason is not None:
                    errors.append({"field": _field(path), "detail": "member names " + reason})
                else:
                    stack.append((member, (*path, key)))
        elif isinstance(item, list):
            stack.extend((member, (*path, index)) for index, member in enumerate(item))
        elif isinstance(item, str):
            reason = _unstorable(item)
            if reason is not None:
                errors.append({"field": _field(path), "detail": reason})
    return sorted(errors, key=lambda e: (e["field"], e["detail"]))


def parse_json(raw: bytes) -> Any:
    """Parse a JSON request body.

    Text that is not JSON is a 400 ``malformed-json`` Problem. Valid JSON holding text
    no database column can store (NUL characters, lone surrogate escapes) is a 422
    ``validation-error`` naming each such field, so it never reaches a query.
    """
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(
            400, "malformed-json", "Malformed JSON body", f"The body is not valid JSON: {exc}"
        ) from None
    errors = unstorable_fields(value)
    if errors:
        raise validation_problem(errors)
    return value


class ApiContract:
    """The operations of one OpenAPI document, with compiled validators."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(_DOC_URI, resource)
        default_security = document.get("security")
        self.operations: dict[tuple[str, str], Operation] = {}
        for path, item in (document.get("paths") or {}).items():
            item_ptr = f"/paths/{_escape(path)}"
            for method in METHODS:
                if method in item:
                    op = self._operation(path, method, item, item_ptr, default_security)
                    self.operations[(method.upper(), path)] = op

    @classmethod
    def load(cls, path: Path) -> ApiContract:
        document = yaml.safe_load(path.read_text())
        if not isinstance(document, dict) or not str(document.get("openapi", "")).startswith("3."):
            raise ValueError(f"{path} is not an OpenAPI 3 document")
        return cls(with_platform_answers(document))

    def find(self, request: web.Request) -> Operation | None:
        """The operation the matched route implements, if the contract has it."""
        resource = request.match_info.route.resource
        if resource is None:
            return None
        method = "GET" if request.method == "HEAD" else request.method
        return self.operations.get((method, resource.canonical))

    def _validator(self, pointer: str) -> Draft202012Validator:
        Draft202012Validator.check_schema(_at(self.document, pointer))
        try:
            schema = _inline_refs(self.document, _at(self.document, pointer), (pointer,))
        except _Unsafe:
            schema = {"$ref": f"{_DOC_URI}#{pointer}"}
        return Draft202012Validator(
            schema,
            registry=self._registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )

    def _operation(
        self,
        path: str,
        method: str,
        item: Mapping[str, Any],
        item_ptr: str,
        default_security: Any,
    ) -> Operation:
        op = item[method]
        op_ptr = f"{item_ptr}/{method}"
        params: dict[tuple[str, str], Parameter] = {}
        for base, raw_params in (
            (item_ptr, item.get("parameters")),
            (op_ptr, op.get("parameters")),
        ):
            for index, raw in enumerate(raw_params or ()):
                param = self._parameter(raw, f"{base}/parameters/{index}")
                if param is not None:
                    params[(param.location, param.name)] = param
        body, body_required, media_types = None, False, frozenset[str]()
        body_check = None
        if "requestBody" in op:
            request_body, rb_ptr = _deref(self.document, op["requestBody"], f"{op_ptr}/requestBody")
            media_types = frozenset(request_body.get("content", {}))
            for media in request_body.get("content", {}):
                if _is_json(media) and "schema" in request_body["content"][media]:
                    body = self._validator(f"{rb_ptr}/content/{_escape(media)}/schema")
                    body_check = fast_check(body.schema)
                    body_required = bool(request_body.get("required", False))
                    break
        security = op.get("security", default_security)
        return Operation(
            method=method.upper(),
            path=path,
            parameters=tuple(params.values()),
            body=body,
            body_required=body_required,
            security=None
            if security is None
            else tuple(frozenset(s for scopes in req.values() for s in scopes) for req in security),
            public=security is not None and (not security or any(not req for req in security)),
            media_types=media_types,
            body_check=body_check,
        )

    def _parameter(self, raw: Any, pointer: str) -> Parameter | None:
        param, pointer = _deref(self.document, raw, pointer)
        if param.get("in") not in ("path", "query"):
            return None
        schema, schema_ptr = _deref(self.document, param.get("schema"), f"{pointer}/schema")
        has_schema = isinstance(schema, Mapping)
        items = schema.get("items", {}) if has_schema else {}
        items, _ = _deref(self.document, items, f"{schema_ptr}/items")
        return Parameter(
            name=param["name"],
            location=param["in"],
            required=bool(param.get("required", param["in"] == "path")),
            validator=self._validator(f"{pointer}/schema") if has_schema else None,
            type=schema.get("type") if has_schema else None,
            item_type=items.get("type") if isinstance(items, Mapping) else None,
            explode=bool(param.get("explode", param.get("style", "form") == "form")),
        )
