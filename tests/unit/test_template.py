"""The service template (docs/architecture.md, "Adding a service") held for every API
service of the registry whose package is present: its files exist, use cases and the
domain import no SQL, HTTP or Redis library, and no module of the package grows past
what one sitting reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lastro.core import registry

PACKAGE_ROOT = Path(registry.__file__).parents[1]
# "~500 lines" in the template; the cap leaves room for a docstring, not a second module.
MAX_LINES = 560
# What a use case (service.py) and the domain may not import (docs/architecture.md).
NO_INFRASTRUCTURE = ("sqlalchemy", "asyncpg", "aiohttp", "redis", "aiokafka")
NO_IO_IN_DOMAIN = (*NO_INFRASTRUCTURE, "lastro.core.db", "lastro.core.http")


def _package(spec: registry.ServiceSpec) -> Path:
    return PACKAGE_ROOT / spec.module.split(".")[1]


API_SERVICES = [s for s in registry.SERVICES if s.kind == "api" and _package(s).is_dir()]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offending(path: Path, banned: tuple[str, ...]) -> list[str]:
    return sorted(
        name
        for name in _imports(path)
        if any(name == b or name.startswith(b + ".") for b in banned)
    )


def test_every_api_service_of_the_registry_is_checked() -> None:
    assert {"identity", "accounts"} <= {s.name for s in API_SERVICES}


@pytest.mark.parametrize("spec", API_SERVICES, ids=lambda s: s.name)
def test_the_package_has_the_template_files(spec: registry.ServiceSpec) -> None:
    package = _package(spec)
    for name in ("__init__.py", "app.py", "api.py", "service.py", "events.py", "openapi.yaml"):
        assert (package / name).is_file(), f"{spec.name}: no {name}"
    for name in ("domain", "store"):
        assert (package / name).is_dir() or (package / f"{name}.py").is_file(), (
            f"{spec.name}: no {name}.py or {name}/"
        )
    assert any((package / "migrations").glob("[0-9][0-9][0-9][0-9]_*.py")), spec.name


@pytest.mark.parametrize("spec", API_SERVICES, ids=lambda s: s.name)
def test_use_cases_import_no_sql_http_or_broker_library(spec: registry.ServiceSpec) -> None:
    assert _offending(_package(spec) / "service.py", NO_INFRASTRUCTURE) == []


@pytest.mark.parametrize("spec", API_SERVICES, ids=lambda s: s.name)
def test_the_domain_is_pure(spec: registry.ServiceSpec) -> None:
    package = _package(spec)
    modules = (
        sorted((package / "domain").rglob("*.py"))
        if (package / "domain").is_dir()
        else [package / "domain.py"]
    )
    found = {str(m.relative_to(package)): _offending(m, NO_IO_IN_DOMAIN) for m in modules}
    assert {m: names for m, names in found.items() if names} == {}


def test_no_module_outgrows_one_sitting() -> None:
    sizes = {
        str(path.relative_to(PACKAGE_ROOT)): len(path.read_text().splitlines())
        for path in PACKAGE_ROOT.rglob("*.py")
        if "migrations" not in path.parts
    }
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by basename (the default import mode): two with one
    name in different folders stop the whole run at collection."""
    tests = Path(__file__).parents[1]
    names = [path.name for path in tests.rglob("*.py") if path.name != "conftest.py"]
    assert sorted({name for name in names if names.count(name) > 1}) == []
