"""Fixtures for the cluster path: the real kube-apiserver + etcd of the dev stack.

The tools come from `lastro dev bootstrap --k8s` (cached by version; `.ci/run` runs it
before `make test`, so a cold Go build never happens inside a test). The fixture calls
it again, which takes a second when everything is cached, then starts etcd and
kube-apiserver under `.dev/k8s` unless they are already healthy. Each test module gets
its own namespace, deleted at the end.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubekit import CHART, CRDS, KUBE_VERSION, apply, documents
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from lastro.core.config import Settings
from lastro.devstack.ca import DevCA
from lastro.devstack.kubernetes import kubeconfig_path, kubernetes_components
from lastro.devstack.kubetools import ensure_tools, tool_path


@pytest.fixture(scope="session")
def k8s_tools(settings: Settings) -> Settings:
    ensure_tools(settings, say=lambda _: None)
    return settings


@pytest.fixture(scope="session")
def kube_apiserver(k8s_tools: Settings) -> Path:
    """The admin kubeconfig of a healthy kube-apiserver (started here if needed)."""
    DevCA(k8s_tools.dev_dir / "ca").ensure()
    for component in kubernetes_components(k8s_tools):
        component.up()
    return kubeconfig_path(k8s_tools)


@pytest.fixture(scope="session")
def api_client(kube_apiserver: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kube_apiserver))
    yield api
    api.close()


@pytest.fixture(scope="session")
def dynamic(api_client: client.ApiClient) -> DynamicClient:
    return DynamicClient(api_client)


@pytest.fixture(scope="session")
def crds_installed(dynamic: DynamicClient) -> list[str]:
    """Apply every CRD in crds/ and wait until the API server serves it."""
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        for document in documents(path):
            apply(dynamic, document)
            names.append(document["metadata"]["name"])
    crds = dynamic.resources.get(
        api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
    )
    for name in names:
        for event in crds.watch(field_selector=f"metadata.name={name}", timeout=30):
            conditions = event["object"].get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
        else:
            pytest.fail(f"CRD {name} was not established within 30 s")
    dynamic.resources.invalidate_cache()
    return names


@pytest.fixture(scope="module")
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"lastro-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def helm(
    k8s_tools: Settings, kube_apiserver: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the cached Helm against the dev cluster, with its own cache and config dirs."""
    home = tmp_path_factory.mktemp("helm")
    binary = str(tool_path(k8s_tools, "helm"))
    env = {
        "KUBECONFIG": str(kube_apiserver),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [binary, *args], capture_output=True, text=True, env=env, check=False, timeout=300
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture(scope="module")
def operator_namespace(namespace: str, dynamic: DynamicClient, helm: Callable[..., Any]) -> str:
    """The chart's operator Role in the test namespace, bound to the dev cluster's
    `lastro-operator` user (what the chart binds to the operator's ServiceAccount)."""
    rendered = helm(
        "template",
        "lastro",
        str(CHART),
        "-n",
        namespace,
        f"--kube-version={KUBE_VERSION}",
        "--show-only",
        "templates/operator/rbac.yaml",
    ).stdout
    role = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Role")
    apply(dynamic, role, namespace)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "lastro-operator-user"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "lastro-operator"}
        ],
    }
    apply(dynamic, binding, namespace)
    return namespace
