"""The Tiltfile, checked offline: Tilt needs Docker, so it cannot run here.

It is evaluated with starlark-pyo3 (the Rust implementation of the Starlark language
Tilt uses) with Tilt's builtins stubbed by functions that record each call and check
what a real `tilt up` would trip on: files that do not exist, a Dockerfile stage that
is not there, a resource name that matches no workload, a dependency on a resource
that is never defined, two port-forwards on one local port. The chart is rendered with
the real Helm, so resource names are checked against what Tilt would see.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import starlark as sl
import yaml
from kubekit import ROOT

Helm = Callable[..., subprocess.CompletedProcess[str]]
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}


@dataclass
class TiltStub:
    """Tilt's API, as far as the Tiltfile uses it."""

    run_helm: Helm
    workloads: set[str] = field(default_factory=set)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    local_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)

    def path(self, relative: str) -> Path:
        path = ROOT / relative
        assert path.exists(), f"the Tiltfile names {relative}, which does not exist"
        return path

    def allow_k8s_contexts(self, context: str) -> None:
        self.contexts.append(context)

    def update_settings(self, **settings: Any) -> None:
        assert set(settings) <= {
            "max_parallel_updates",
            "k8s_upsert_timeout_secs",
            "suppress_unused_image_warnings",
        }

    def blob(self, text: str) -> str:
        return text

    def k8s_yaml(self, sources: Any) -> None:
        for source in sources if isinstance(sources, list) else [sources]:
            text = source if "\n" in source else self.path(source).read_text()
            for doc in yaml.safe_load_all(text):
                if doc and doc["kind"] in WORKLOADS:
                    self.workloads.add(doc["metadata"]["name"])
                if doc and doc["kind"] == "Namespace":
                    self.workloads.add(doc["metadata"]["name"] + ":namespace")

    def helm(
        self, chart: str, name: str, namespace: str, values: list[str], kube_version: str
    ) -> str:
        for values_file in values:
            self.path(values_file)
        arguments = ["template", name, str(self.path(chart)), "-n", namespace]
        arguments += [f"--kube-version={kube_version}", "--include-crds"]
        for values_file in values:
            arguments += ["-f", str(ROOT / values_file)]
        return self.run_helm(*arguments).stdout

    def k8s_resource(self, workload: str = "", **options: Any) -> None:
        objects = options.get("objects", [])
        if workload:
            assert workload in self.workloads, f"k8s_resource({workload!r}) matches no workload"
        for selector in objects:
            assert selector in self.workloads, f"k8s_resource objects={selector!r} matches nothing"
        name = options.get("new_name", workload)
        assert name not in self.resources, f"resource {name} defined twice"
        self.resources[name] = options

    def local_resource(self, name: str, cmd: str, **options: Any) -> None:
        for dependency in options.get("deps", []):
            self.path(dependency)
        for script in re.findall(r"tilt/\S+\.py", cmd):
            self.path(script)
        self.local_resources[name] = {"cmd": cmd, **options}

    def docker_build_with_restart(self, ref: str, context: str, **options: Any) -> None:
        dockerfile = self.path(options["dockerfile"]).read_text()
        assert re.search(rf"^FROM .+ AS {options['target']}$", dockerfile, re.MULTILINE)
        for included in options.get("only", []):
            self.path(included)
        self.images.append({"ref": ref, "context": context, **options})

    def sync(self, source: str, destination: str) -> dict[str, str]:
        self.path(source)
        assert destination.startswith("/opt/lastro/lib/python3.11/site-packages/")
        return {"sync": source, "to": destination}

    def fall_back_on(self, files: list[str]) -> dict[str, list[str]]:
        for name in files:
            self.path(name)
        return {"fall_back_on": files}

    def link(self, url: str, name: str) -> dict[str, str]:
        return {"url": url, "name": name}


BUILTINS = (
    "allow_k8s_contexts",
    "update_settings",
    "blob",
    "k8s_yaml",
    "helm",
    "k8s_resource",
    "local_resource",
    "sync",
    "fall_back_on",
    "link",
)


@pytest.fixture(scope="module")
def tilt(helm: Helm) -> TiltStub:
    """The Tiltfile evaluated once against the stubs."""
    stub = TiltStub(run_helm=helm)

    def load(module: str) -> sl.FrozenModule:
        assert module == "ext://restart_process", f"unexpected load({module!r})"
        extension = sl.Module()
        extension.add_callable("docker_build_with_restart", stub.docker_build_with_restart)
        return extension.freeze()

    dialect = sl.Dialect.extended()
    dialect.enable_top_level_stmt = True  # Tilt allows top-level for loops
    ast = sl.parse("Tiltfile", (ROOT / "Tiltfile").read_text(), dialect)
    module = sl.Module()
    for name in BUILTINS:
        module.add_callable(name, getattr(stub, name))
    sl.eval(module, ast, sl.Globals.standard(), sl.FileLoader(load))
    return stub


def test_a_broken_reference_fails_the_check(helm: Helm) -> None:
    stub = TiltStub(run_helm=helm)
    with pytest.raises(AssertionError, match="matches no workload"):
        stub.k8s_resource("lastro-ledger")
    with pytest.raises(AssertionError, match="does not exist"):
        stub.k8s_yaml("tilt/manifests/mysql.yaml")


def test_the_tiltfile_only_runs_against_the_kind_cluster(tilt: TiltStub) -> None:
    assert tilt.contexts == ["kind-lastro"]
    kind = yaml.safe_load((ROOT / "tilt" / "kind-config.yaml").read_text())
    assert kind["name"] == "lastro"


def test_every_service_of_the_chart_is_a_tilt_resource(tilt: TiltStub) -> None:
    for name in (
        "identity",
        "accounts",
        "transactions",
        "transactions-worker",
        "fraud",
        "fraud-analyser",
        "notifications",
        "operator",
    ):
        assert f"lastro-{name}" in tilt.resources


def test_the_image_is_built_once_with_live_update(tilt: TiltStub) -> None:
    (image,) = tilt.images
    assert image["ref"] == "lastro"
    synced = {step["sync"] for step in image["live_update"] if "sync" in step}
    assert synced == {"services/lastro", "operator/lastro_operator"}


def test_every_dependency_names_a_defined_resource(tilt: TiltStub) -> None:
    defined = set(tilt.resources) | set(tilt.local_resources)
    for name, options in [*tilt.resources.items(), *tilt.local_resources.items()]:
        for dependency in options.get("resource_deps", []):
            assert dependency in defined, f"{name} depends on undefined {dependency}"


def test_port_forwards_use_the_dev_stack_ports_once_each(tilt: TiltStub) -> None:
    local_ports = [
        int(forward.split(":")[0])
        for options in tilt.resources.values()
        for forward in options.get("port_forwards", [])
    ]
    assert len(local_ports) == len(set(local_ports))
    assert {7001, 7002, 7003, 7004, 7005, 15432, 16379, 8200} <= set(local_ports)


def test_the_policies_are_applied_after_the_operator(tilt: TiltStub) -> None:
    policies = tilt.local_resources["policies"]
    assert "apply -R -f policies/" in policies["cmd"]
    assert "lastro-operator" in policies["resource_deps"]


def test_the_image_runs_as_the_user_the_chart_expects() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/lastro /opt/lastro" in runtime
    assert 'ENTRYPOINT ["lastro"]' in runtime
    (user,) = re.findall(r"^USER (\d+):(\d+)$", runtime, re.MULTILINE)
    values = yaml.safe_load((ROOT / "charts" / "lastro" / "values.yaml").read_text())
    pod = values["podSecurityContext"]
    assert (int(user[0]), int(user[1])) == (pod["runAsUser"], pod["runAsGroup"])
    assert int(user[0]) != 0
