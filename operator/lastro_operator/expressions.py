"""Checking a FraudRule's CEL expression before it is published.

The seam is :class:`ExpressionValidator`: anything callable with the expression that
returns None when it is acceptable and a human-readable error otherwise. The fraud
service itself is the final judge (its admin API answers 422 for an expression it
cannot compile, and the operator reports that as ``Invalid`` too); checking first
keeps an obviously broken rule from ever reaching it and explains why in ``status``.

:class:`CelSyntaxValidator` is the interim validator, used until the fraud service's
own compiler (``lastro.fraud``) is importable here: it parses with cel-python and
checks that the expression only reads the variables a rule is given (``txn``,
``features``, ``now``, plus the variables its own macros bind). It does not type-check;
the fraud compiler will, and :func:`default_validator` is where it plugs in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import celpy
from celpy.celparser import CELParseError
from lark import Token, Tree

RULE_VARIABLES: Final = frozenset({"txn", "features", "now"})
# Macros whose first argument binds a variable inside the second: list.exists(x, x > 1).
BINDING_MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
MAX_LENGTH: Final = 4096


class ExpressionValidator(Protocol):
    def __call__(self, expression: str) -> str | None:
        """None when ``expression`` is acceptable, else why it is not."""


def _bound_variables(tree: Tree[Token]) -> set[str]:
    """Names bound by comprehension macros (``items.exists(i, ...)`` binds ``i``)."""
    bound: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data != "member_dot_arg" or len(node.children) < 3:
            continue
        method, arguments = node.children[1], node.children[2]
        if not (isinstance(method, Token) and method in BINDING_MACROS):
            continue
        if isinstance(arguments, Tree) and arguments.children:
            first = arguments.children[0]
            if isinstance(first, Tree):
                names = list(first.scan_values(lambda v: isinstance(v, Token)))
                if len(names) == 1:
                    bound.add(str(names[0]))
    return bound


def _free_variables(tree: Tree[Token]) -> set[str]:
    names = {
        str(node.children[0])
        for node in tree.iter_subtrees()
        if node.data == "ident" and node.children
    }
    return names - _bound_variables(tree)


class CelSyntaxValidator:
    """Parses the expression as CEL and checks which variables it reads."""

    def __init__(self, variables: frozenset[str] = RULE_VARIABLES) -> None:
        self._variables = variables
        self._environment = celpy.Environment()

    def __call__(self, expression: str) -> str | None:
        if not expression.strip():
            return "the expression is empty"
        if len(expression) > MAX_LENGTH:
            return f"the expression is longer than {MAX_LENGTH} characters"
        try:
            tree = self._environment.compile(expression)
        except CELParseError as exc:
            line, column = getattr(exc, "line", None), getattr(exc, "column", None)
            where = f" at line {line}, column {column}" if line and column else ""
            return f"CEL syntax error{where}: {expression!r} does not parse"
        unknown = sorted(_free_variables(tree) - self._variables)
        if unknown:
            allowed = ", ".join(sorted(self._variables))
            return f"unknown variable {', '.join(unknown)} (a rule reads {allowed})"
        return None


def default_validator() -> Callable[[str], str | None]:
    """The validator the operator uses: the interim CEL syntax check (see module doc)."""
    return CelSyntaxValidator()
