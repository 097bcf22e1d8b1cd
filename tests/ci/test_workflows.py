"""The CI/CD pipeline's own rules, checked on every `make test`: the workflows pass
actionlint (with shellcheck over their embedded shell), every action is pinned to a full
commit SHA with its version in a comment, every job holds only the permissions it needs,
Dependabot watches every manifest, and the pieces that must happen in order do.

These check the workflow files themselves, not the Dockerfile, chart or Tiltfile they use."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
ACTIONS = sorted((ROOT / ".github" / "actions").glob("*/action.y*ml"))  # local composites
DEPENDABOT = ROOT / ".github" / "dependabot.yml"

USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>[^\s#]+)[ \t]*(?:#\s*(?P<comment>.*))?$")
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40})$")
VERSION = re.compile(r"^v\d+(\.\d+){0,2}$")

# A `uses:` that is not a full commit SHA, and why it may stay so. A local reusable
# workflow (`./.github/workflows/...`) runs at the caller's own commit, so it needs none.
UNPINNED: dict[str, str] = {}

# Every write scope a job holds, and what it is for; any other job reads at most.
WRITE_SCOPES: dict[tuple[str, str], set[str]] = {
    # push the image to GHCR; sign and store its build-provenance attestation
    ("release.yml", "image"): {"packages", "id-token", "attestations"},
    # push the chart to GHCR; sign and store its build-provenance attestation
    ("release.yml", "chart"): {"packages", "id-token", "attestations"},
    # create the GitHub release with its notes and the chart package
    ("release.yml", "notes"): {"contents"},
}


def load(path: Path) -> dict[Any, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


def events(workflow: dict[Any, Any]) -> dict[str, Any]:
    """The workflow's `on:` as a mapping (YAML 1.1 reads a bare `on` key as True)."""
    on = workflow["on"] if "on" in workflow else workflow[True]
    return {on: None} if isinstance(on, str) else dict(on)


def triggers(workflow: dict[Any, Any]) -> set[str]:
    return set(events(workflow))


def steps(workflow: dict[Any, Any], job: str) -> list[dict[str, Any]]:
    found = workflow["jobs"][job].get("steps", [])
    assert isinstance(found, list)
    return found


def step_index(workflow: dict[Any, Any], job: str, needle: str) -> int:
    """The index of the only step whose `run` or `uses` contains ``needle``."""
    hits = [
        i
        for i, step in enumerate(steps(workflow, job))
        if needle in str(step.get("run", "")) + str(step.get("uses", ""))
    ]
    assert len(hits) == 1, f"{job}: expected one step with {needle!r}, found {len(hits)}"
    return hits[0]


def test_the_workflows_are_there() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml", "e2e-kind.yml"}


def test_every_workflow_passes_actionlint_with_shellcheck(
    actionlint: Path, shellcheck: Path
) -> None:
    result = subprocess.run(
        [str(actionlint), "-no-color", f"-shellcheck={shellcheck}", *map(str, WORKFLOWS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ACTIONS, ids=lambda p: p.parent.name)
def test_composite_actions_shell_passes_shellcheck(
    path: Path, shellcheck: Path, tmp_path: Path
) -> None:
    """actionlint reads workflows only: the shell of a local composite action gets
    shellcheck here, as bash, the shell every such step declares."""
    for number, step in enumerate(load(path)["runs"]["steps"]):
        if "run" not in step:
            continue
        assert step["shell"] == "bash", f"{path}: step {number} runs in {step['shell']}"
        script = tmp_path / f"step-{number}.sh"
        script.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + step["run"])
        result = subprocess.run(
            [str(shellcheck), "--format=gcc", str(script)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{path} step {number}:\n{result.stdout}"


def test_actionlint_reports_shellcheck_findings_in_embedded_shell(
    actionlint: Path, shellcheck: Path, tmp_path: Path
) -> None:
    """The control for the test above: shellcheck really runs over `run:` blocks."""
    workflow = tmp_path / ".github" / "workflows" / "unquoted.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        textwrap.dedent(
            """\
            name: unquoted
            on: push
            permissions: {}
            jobs:
              echo:
                runs-on: ubuntu-24.04
                permissions: {}
                steps:
                  - run: rm -rf $TARGET/build
            """
        )
    )
    result = subprocess.run(
        [str(actionlint), "-no-color", f"-shellcheck={shellcheck}", str(workflow)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "SC2086" in result.stdout


def declared_uses(document: dict[Any, Any]) -> list[str]:
    """Every `uses` of a workflow (jobs and their steps) or of a composite action."""
    if "runs" in document:
        return [s["uses"] for s in document["runs"].get("steps", []) if "uses" in s]
    return [
        uses
        for job in document["jobs"].values()
        for uses in [job.get("uses")] + [s.get("uses") for s in job.get("steps", [])]
        if uses
    ]


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_action_is_pinned_to_a_commit_sha_with_its_version(path: Path) -> None:
    lines = [m for line in path.read_text().splitlines() if (m := USES_LINE.match(line))]
    parsed = declared_uses(load(path))
    # Every `uses` the runner sees is one the line check below sees.
    assert sorted(m["ref"] for m in lines) == sorted(parsed)
    for match in lines:
        ref, comment = match["ref"], (match["comment"] or "").strip()
        if ref.startswith("./") or ref in UNPINNED:
            continue
        assert PINNED.match(ref), f"{path.name}: {ref} is not pinned to a full commit SHA"
        assert VERSION.match(comment), f"{path.name}: {ref} has no `# vX.Y.Z` comment"


def test_one_action_has_one_pin_across_workflows() -> None:
    pins: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in WORKFLOWS + ACTIONS:
        for line in path.read_text().splitlines():
            if (m := USES_LINE.match(line)) and (pinned := PINNED.match(m["ref"])):
                pins[pinned["action"]].add((pinned["sha"], (m["comment"] or "").strip()))
    drifted = {action: found for action, found in pins.items() if len(found) > 1}
    assert not drifted


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_job_declares_least_privilege_permissions(path: Path) -> None:
    workflow = load(path)
    assert workflow.get("permissions") == {}, "the workflow's default must grant nothing"
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, f"{path.name}: job {name} declares no permissions"
        permissions = job["permissions"]
        assert isinstance(permissions, dict), f"{path.name}: {name}: {permissions!r}"
        assert set(permissions.values()) <= {"read", "write", "none"}
        writes = {scope for scope, level in permissions.items() if level == "write"}
        assert writes == WRITE_SCOPES.get((path.name, name), set()), f"{path.name}: {name}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_untrusted_triggers_get_no_write_access(path: Path) -> None:
    workflow = load(path)
    assert "pull_request_target" not in triggers(workflow)
    if "pull_request" in triggers(workflow):
        assert not any(
            level == "write"
            for job in workflow["jobs"].values()
            for level in job["permissions"].values()
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_has_a_concurrency_group_and_every_job_a_timeout(path: Path) -> None:
    workflow = load(path)
    assert workflow["concurrency"]["group"]
    for name, job in workflow["jobs"].items():
        if "uses" not in job:  # a reusable workflow's own jobs carry their timeouts
            assert job.get("timeout-minutes"), f"{path.name}: job {name} has no timeout"


def test_ci_runs_make_test_as_the_ci_script_and_uploads_what_pytest_writes(
    tmp_path: Path,
) -> None:
    ci = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert {"push", "pull_request"} <= triggers(ci)
    assert step_index(ci, "lint", "make lint") >= 0
    assert "CI=true bash .ci/run" in steps(ci, "test")[step_index(ci, "test", ".ci/run")]["run"]
    upload = steps(ci, "test")[step_index(ci, "test", "actions/upload-artifact@")]["with"]
    uploaded = ROOT / upload["path"]

    addopts = shlex.split(ci["jobs"]["test"]["env"]["PYTEST_ADDOPTS"])
    junit = ROOT / next(o.split("=", 1)[1] for o in addopts if o.startswith("--junitxml="))
    cov_opt = next(o for o in addopts if o.startswith("--cov-report=xml:"))
    coverage = ROOT / cov_opt.removeprefix("--cov-report=xml:")
    assert uploaded in junit.parents and uploaded in coverage.parents

    # The options work: pytest with them writes both reports (pytest-cov is installed).
    (tmp_path / "test_money.py").write_text(
        "from lastro.core.money import Money\n\n"
        "def test_money() -> None:\n"
        "    assert Money.parse('12.34', 'EUR').amount == 1234\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_money.py"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "services")}
        | {"PYTEST_ADDOPTS": ci["jobs"]["test"]["env"]["PYTEST_ADDOPTS"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = tmp_path / junit.relative_to(ROOT), tmp_path / coverage.relative_to(ROOT)
    assert 'tests="1"' in written[0].read_text()
    assert "<coverage " in written[1].read_text()


def test_release_scans_the_image_before_pushing_it_with_sbom_and_provenance() -> None:
    release = load(ROOT / ".github" / "workflows" / "release.yml")
    assert triggers(release) == {"push"} and events(release)["push"]["tags"] == ["v*"]
    assert release["jobs"]["image"]["needs"] == "ci"
    scan = step_index(release, "image", "aquasecurity/trivy-action@")
    login = step_index(release, "image", "docker/login-action@")
    image_steps = steps(release, "image")
    builds = [
        i for i, s in enumerate(image_steps) if "docker/build-push-action@" in s.get("uses", "")
    ]
    pushed = [i for i in builds if image_steps[i]["with"].get("push") is True]
    assert len(pushed) == 1 and scan < login < pushed[0]
    assert image_steps[scan]["with"]["severity"] == "CRITICAL"
    assert image_steps[scan]["with"]["exit-code"] == "1"
    push = image_steps[pushed[0]]["with"]
    assert push["sbom"] is True and str(push["provenance"]).startswith("mode=max")
    assert set(push["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}

    package = steps(release, "chart")[step_index(release, "chart", "helm package")]["run"]
    assert '--version "$version" --app-version "$version"' in package
    assert 'helm push "$PACKAGE" "$REPOSITORY"' in str(steps(release, "chart"))


def test_e2e_installs_crds_before_the_chart_and_smoke_tests_last() -> None:
    e2e = load(ROOT / ".github" / "workflows" / "e2e-kind.yml")
    assert triggers(e2e) == {"push", "workflow_dispatch"}
    order = [
        step_index(e2e, "chart", needle)
        for needle in (
            "helm/kind-action@",
            "kind load docker-image",
            "tilt/manifests/",
            "-f crds/",
            "helm install",
            "tilt/operator_client.py",
            "-f policies/",
            "python -m lastro.smoke --base-url",
        )
    ]
    assert order == sorted(order)
    install = steps(e2e, "chart")[step_index(e2e, "chart", "helm install")]["run"]
    assert "--wait" in install and "--set image.tag=e2e" in install
    for path in ("tilt/manifests", "tilt/values-dev.yaml", "tilt/dev_secrets.py", "crds"):
        assert (ROOT / path).exists(), f"e2e-kind.yml uses {path}, which does not exist"
    assert step_index(e2e, "tilt", "tilt ci") > step_index(e2e, "tilt", "helm/kind-action@")


def _smoke_command(run: str, env: dict[str, str]) -> list[str]:
    """The `python -m lastro.smoke …` command of a step, its variables expanded."""
    command = run[run.index("python -m lastro.smoke") :].replace("\\\n", " ").splitlines()[0]
    for name, value in env.items():
        command = command.replace(f"${name}", value)
    return shlex.split(command)


def test_the_kind_job_runs_lastro_smoke_with_arguments_it_accepts(tmp_path: Path) -> None:
    """The cluster's smoke test is `python -m lastro.smoke`, the module the local e2e
    (tests/e2e/test_smoke.py) runs too, and it parses the job's arguments."""
    from lastro.smoke import SERVICES, parse_args, service_urls

    e2e = load(ROOT / ".github" / "workflows" / "e2e-kind.yml")
    run = steps(e2e, "chart")[step_index(e2e, "chart", "python -m lastro.smoke")]["run"]
    env = {str(k): str(v) for k, v in e2e["env"].items()} | {"RUNNER_TEMP": str(tmp_path)}
    argv = _smoke_command(run, env)
    assert argv[:3] == ["python", "-m", "lastro.smoke"]
    args = parse_args(argv[3:])
    assert args.ca is not None and args.admin_credentials is not None
    urls = service_urls(args.base_url, args.url)
    assert set(urls) == set(SERVICES)
    assert all(url.startswith("https://localhost:") for url in urls.values())
    local = (ROOT / "tests" / "e2e" / "test_smoke.py").read_text()
    assert '"lastro.smoke"' in local


def test_dependabot_watches_every_manifest_in_the_repository() -> None:
    config = yaml.safe_load(DEPENDABOT.read_text())
    watched = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert all(u["schedule"]["interval"] for u in config["updates"])
    assert {eco for eco, _ in watched} >= {"pip", "github-actions", "docker", "gomod"}
    assert ("github-actions", "/") in watched
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    manifests = {"pyproject.toml": "pip", "go.mod": "gomod", "Dockerfile": "docker"}
    manifests |= {"pom.xml": "maven"}
    for file in tracked:
        ecosystem = manifests.get(Path(file).name)
        if ecosystem and not file.startswith("tests/"):
            directory = "/" + str(Path(file).parent).removeprefix(".")
            assert (ecosystem, directory.rstrip("/") or "/") in watched, file
