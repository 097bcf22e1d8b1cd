"""Load FraudRule resources from YAML files (``policies/fraudrules/`` by default).

The same files the Kubernetes operator applies; in dev the fraud service loads
them at start when the rules topic is empty. Each rule's revision is
``file:<first 16 hex of the SHA-256 of its spec>``, so reloading unchanged files
yields identical rules and an unchanged rule set version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Final

import yaml

from lastro.fraud.domain.rules import InvalidRule, Rule, compile_rule, rule_from_resource

DEFAULT_DIRECTORY: Final = Path(__file__).resolve().parents[3] / "policies" / "fraudrules"
"""``policies/fraudrules`` of the source checkout this package runs from."""


class RuleFileError(ValueError):
    """A rule file that cannot be read, or holds an invalid FraudRule."""


def load_rule_file(path: Path) -> list[Rule]:
    """The rules in one YAML file (one or more FraudRule documents), each compiled."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RuleFileError(f"{path}: {exc}") from None
    rules = []
    for document in documents:
        if not isinstance(document, dict):
            raise RuleFileError(f"{path}: a document is not a mapping")
        try:
            rule = rule_from_resource(document)
            if not rule.revision:
                digest = hashlib.sha256(
                    json.dumps(document.get("spec"), sort_keys=True).encode()
                ).hexdigest()
                rule = replace(rule, revision=f"file:{digest[:16]}")
            compile_rule(rule)
        except InvalidRule as exc:
            raise RuleFileError(f"{path}: {exc}") from None
        rules.append(rule)
    return rules


def load_rule_files(directory: Path = DEFAULT_DIRECTORY) -> list[Rule]:
    """Every rule in ``directory``'s ``*.yaml`` and ``*.yml`` files, sorted by id.

    Raises RuleFileError for an unreadable or invalid file and for an id defined twice.
    """
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise RuleFileError(f"{directory}: no FraudRule files")
    by_id: dict[str, Rule] = {}
    for path in paths:
        for rule in load_rule_file(path):
            if rule.id in by_id:
                raise RuleFileError(f"{path}: rule {rule.id!r} is defined twice")
            by_id[rule.id] = rule
    return [by_id[rule_id] for rule_id in sorted(by_id)]
