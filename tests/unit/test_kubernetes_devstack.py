"""The Kubernetes part of the dev stack, without starting it: credentials, kubeconfigs,
fake nodes, the version stamped into the control plane, the tools cache."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from lastro.core.config import Settings, load_settings
from lastro.devstack.kubenodes import fake_node, node_ready
from lastro.devstack.kubernetes import KubeAPIServer, kubeconfig, kubeconfig_path, token_file
from lastro.devstack.kubetools import (
    HELM,
    KUBE_APISERVER,
    _version_flags,
    ensure_go_tool,
    tool_path,
)


@pytest.fixture
def dev(tmp_path: Path) -> Settings:
    return load_settings(
        {"LASTRO_DEV_DIR": str(tmp_path), "LASTRO_TOOLS_DIR": str(tmp_path / "bin")}
    )


def test_the_token_file_gives_each_user_its_groups() -> None:
    rows = list(
        csv.reader(io.StringIO(token_file({"lastro-admin": "a" * 8, "lastro-operator": "o" * 8})))
    )
    assert rows == [
        ["a" * 8, "lastro-admin", "lastro-admin", "system:masters"],
        ["o" * 8, "lastro-operator", "lastro-operator", "lastro:operators"],
    ]


def test_credentials_are_private_and_kept_across_restarts(dev: Settings) -> None:
    server = KubeAPIServer(dev)
    first = server.write_credentials()
    assert first == server.write_credentials()
    assert first["lastro-admin"] != first["lastro-operator"]
    for user in ("lastro-admin", "lastro-operator"):
        path = kubeconfig_path(dev, user)
        assert path.stat().st_mode & 0o777 == 0o600
        document = yaml.safe_load(path.read_text())
        assert document["users"][0]["user"]["token"] == first[user]
        assert document["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:16443"
    assert (dev.dev_dir / "k8s" / "tokens.csv").stat().st_mode & 0o777 == 0o600


def test_a_kubeconfig_verifies_the_server_with_the_dev_ca(tmp_path: Path) -> None:
    document = kubeconfig("https://127.0.0.1:16443", tmp_path / "ca.pem", "lastro-admin", "t")
    cluster = document["clusters"][0]["cluster"]
    assert cluster["certificate-authority"] == str(tmp_path / "ca.pem")
    assert "insecure-skip-tls-verify" not in cluster
    assert document["current-context"] == "lastro-admin"


def test_the_control_plane_reports_its_release_not_a_dev_build() -> None:
    flags = _version_flags(KUBE_APISERVER)
    assert "-X k8s.io/component-base/version.gitVersion=v1.35.4" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/component-base/version.gitMinor=35" in flags


def test_fake_nodes_are_taken_over_by_kwok_and_ready_only_without_the_taint() -> None:
    node = fake_node(1)
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == "dev-1"
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {}}
    assert node_ready(ready)
    tainted = {**ready, "spec": {"taints": [{"key": "node.kubernetes.io/not-ready"}]}}
    assert not node_ready(tainted)
    assert not node_ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})


def test_a_cached_tool_is_linked_without_building(dev: Settings) -> None:
    dev.tools_dir.mkdir(parents=True)
    HELM.cached(dev.tools_dir).write_text("#!/bin/sh\n")
    assert ensure_go_tool(HELM, dev.tools_dir, say=lambda _: None) == "cached"
    assert tool_path(dev, "helm").resolve() == HELM.cached(dev.tools_dir)
    assert (dev.tools_dir / "helm").is_symlink()


def test_status_and_down_include_the_cluster_once_it_was_started(dev: Settings) -> None:
    from lastro.devstack import stack
    from lastro.devstack.components import components
    from lastro.devstack.kubernetes import kubernetes_started

    cluster = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
    assert not kubernetes_started(dev)
    assert not {c.name for c in components(dev)} & set(cluster)
    (dev.dev_dir / "k8s").mkdir(parents=True)
    assert kubernetes_started(dev)
    names = [c.name for c in components(dev, kubernetes=kubernetes_started(dev))]
    assert names[-5:] == cluster  # started last, stopped first
    assert stack.component(dev, "kube-apiserver").name == "kube-apiserver"
