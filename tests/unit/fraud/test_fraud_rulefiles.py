"""The FraudRule files shipped under policies/fraudrules, and the loader that reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lastro.fraud.domain.decision import Mode
from lastro.fraud.domain.rules import RuleSet
from lastro.fraud.rulefiles import DEFAULT_DIRECTORY, RuleFileError, load_rule_file, load_rule_files

POLICIES = Path(__file__).resolve().parents[3] / "policies" / "fraudrules"
FILES = sorted(POLICIES.glob("*.yaml"))


def test_the_loader_defaults_to_the_repository_policies() -> None:
    assert DEFAULT_DIRECTORY == POLICIES
    assert len(FILES) >= 15


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_shipped_file_is_one_valid_fraudrule_named_after_its_file(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert document["apiVersion"] == "lastro.io/v1alpha1"
    assert document["kind"] == "FraudRule"
    (rule,) = load_rule_file(path)
    assert rule.id == path.stem == document["metadata"]["name"]
    assert rule.description
    assert rule.revision.startswith("file:")


def test_the_default_set_compiles_and_ships_shadow_and_enforced_rules() -> None:
    rules = load_rule_files()
    ruleset = RuleSet.of(rules)
    modes = {rule.mode for rule in rules}
    assert modes == {Mode.SHADOW, Mode.ENFORCE}
    assert len(ruleset.rules) == len(FILES)


def test_reloading_unchanged_files_gives_identical_rules() -> None:
    first = RuleSet.of(load_rule_files())
    again = first
    for rule in load_rule_files():
        again = again.upsert(rule)
    assert again is first


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


VALID = """apiVersion: lastro.io/v1alpha1
kind: FraudRule
metadata:
  name: {name}
spec:
  expression: {expression}
  action: review
"""


def test_an_invalid_expression_is_reported_with_the_file_and_cel_error(tmp_path: Path) -> None:
    _write(tmp_path, "bad.yaml", VALID.format(name="bad", expression="'features.count_1m >'"))
    with pytest.raises(RuleFileError) as caught:
        load_rule_files(tmp_path)
    assert "bad.yaml" in str(caught.value) and "Syntax error" in str(caught.value)


def test_several_documents_per_file_and_duplicate_ids(tmp_path: Path) -> None:
    two = (
        VALID.format(name="a", expression="'true'")
        + "---\n"
        + VALID.format(name="b", expression="'false'")
    )
    _write(tmp_path, "two.yaml", two)
    assert [rule.id for rule in load_rule_files(tmp_path)] == ["a", "b"]
    _write(tmp_path, "dup.yml", VALID.format(name="a", expression="'true'"))
    with pytest.raises(RuleFileError, match="defined twice"):
        load_rule_files(tmp_path)


@pytest.mark.parametrize("text", ["kind: [unclosed", "- a list\n", "plain text\n"])
def test_files_that_are_not_fraudrules_are_errors(tmp_path: Path, text: str) -> None:
    _write(tmp_path, "x.yaml", text)
    with pytest.raises(RuleFileError):
        load_rule_files(tmp_path)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match="no FraudRule files"):
        load_rule_files(tmp_path)
