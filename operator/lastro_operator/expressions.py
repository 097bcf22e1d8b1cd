"""Checking a FraudRule before it is published, with the fraud service's own compiler.

The seam is :data:`RuleValidator`: called with the rule document the operator is about
to publish (docs/interfaces.md), it returns None when the rule is acceptable and a
human-readable error otherwise (``expression: undeclared reference to 'account' …``).
The default is :func:`lastro.fraud.domain.rules.validate_rule`, the same pure function
the fraud service runs on its admin API and on its rules topic, so the operator and
the service can never disagree about what a valid rule is. The service stays the final
judge: an expression it refuses anyway is reported as ``Invalid`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

RuleValidator: TypeAlias = Callable[[Mapping[str, Any]], str | None]


def default_validator() -> RuleValidator:
    """The fraud service's rule compiler (parses and type-checks, never runs)."""
    from lastro.fraud.domain.rules import validate_rule

    return validate_rule
