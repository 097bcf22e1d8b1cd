"""Fake nodes for the dev cluster: Deployments get Pods, and Pods get "Running".

No kubelet can run here (no container runtime), so `lastro dev up --k8s` adds what
makes the cluster behave like one from the API's point of view:

* kube-controller-manager: Deployments -> ReplicaSets -> Pods, HPAs, PDBs, service
  accounts, garbage collection, node lifecycle (it lifts the not-ready taint);
* kube-scheduler: binds Pods to nodes, honouring affinity, spread and resources;
* kwok (sigs.k8s.io/kwok): simulates :data:`NODES` fake nodes, their heartbeats and
  their Pods' lifecycle (scheduled -> Running and Ready; deleted -> gone) with its
  upstream "fast" stages.

So `helm install --wait` completes, rollouts progress, and `kubectl get pods` shows
what a real cluster would schedule; no container ever starts. The three listen on no
port (``--secure-port=0``); health is their process plus the effect they have.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from lastro.core.config import Settings
from lastro.devstack.base import Component
from lastro.devstack.kubernetes import apiserver_url, k8s_dir, kubeconfig_path
from lastro.devstack.kubetools import (
    KUBE_CONTROLLER_MANAGER,
    KUBE_SCHEDULER,
    KWOK,
    kwok_stages,
)
from lastro.devstack.processes import StartError, spawn, wait_until

NODES = 3
NODE_ANNOTATION = "kwok.x-k8s.io/node"
# What each fake node offers the scheduler.
NODE_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110"}
# Controllers that need a cloud, real volumes or a pod network are left out.
DISABLED_CONTROLLERS = (
    "nodeipam",
    "service-lb-controller",
    "cloud-node-lifecycle",
    "persistentvolume-binder",
    "attachdetach",
)


def _admin_token(settings: Settings) -> str:
    document = yaml.safe_load(kubeconfig_path(settings).read_text())
    return str(document["users"][0]["user"]["token"])


def api(settings: Settings, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to the dev kube-apiserver as lastro-admin; (status, JSON body)."""
    request = urllib.request.Request(  # noqa: S310 - https URL built from settings
        f"{apiserver_url(settings)}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {_admin_token(settings)}",
            "Content-Type": "application/json",
        },
    )
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except OSError:
        return 0, None


def fake_node(index: int) -> dict[str, Any]:
    """A Node object kwok takes over (its annotation), with room for the chart."""
    name = f"kwok-node-{index}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": f"dev-{index % 3}",
                "type": "kwok",
            },
        },
        "status": {"allocatable": NODE_CAPACITY, "capacity": NODE_CAPACITY},
    }


def node_ready(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    taints = node.get("spec", {}).get("taints") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready and not any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)


class _ControlPlaneProcess(Component):
    """A control-plane binary from the tools cache, talking to kube-apiserver as admin."""

    tool = KUBE_CONTROLLER_MANAGER

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dir = k8s_dir(settings) / self.name

    def binary(self) -> Path:
        built = self.tool.cached(self.settings.tools_dir)
        if not built.exists():
            raise StartError(f"{self.name} is not built: run `lastro dev bootstrap --k8s`")
        return built

    def address(self) -> str:
        return f"{apiserver_url(self.settings)} (client)"

    def available(self) -> bool:
        return self.tool.cached(self.settings.tools_dir).exists()

    def kubeconfig_flags(self) -> list[str]:
        config = str(kubeconfig_path(self.settings))
        return [
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--leader-elect=false",
            "--secure-port=0",
        ]


class KubeControllerManager(_ControlPlaneProcess):
    name = "kube-controller-manager"
    tool = KUBE_CONTROLLER_MANAGER

    def healthy(self) -> bool:
        # Alive, and the service-account controller did its work in `default`.
        if self.pid() is None:
            return False
        status, _ = api(self.settings, "GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    def start(self) -> None:
        controllers = ",".join(["*", *(f"-{name}" for name in DISABLED_CONTROLLERS)])
        proc = spawn(
            [
                str(self.binary()),
                *self.kubeconfig_flags(),
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={k8s_dir(self.settings) / 'sa.key'}",
                f"--root-ca-file={self.settings.ca_file}",
                f"--controllers={controllers}",
                "--node-monitor-grace-period=60s",
                "--v=1",
            ],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        wait_until(self.healthy, timeout=60, what=self.name, log=self.log, proc=proc)


class KubeScheduler(_ControlPlaneProcess):
    name = "kube-scheduler"
    tool = KUBE_SCHEDULER

    def healthy(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        proc = spawn(
            [str(self.binary()), *self.kubeconfig_flags(), "--v=1"],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        # It has no port and no object to show; it must at least stay up.
        wait_until(
            lambda: "Starting Kubernetes Scheduler" in self.log.read_text(errors="replace"),
            timeout=30,
            what=self.name,
            log=self.log,
            proc=proc,
        )


class Kwok(_ControlPlaneProcess):
    name = "kwok"
    tool = KWOK

    def address(self) -> str:
        return f"{NODES} fake nodes kwok-node-0..{NODES - 1}"

    def healthy(self) -> bool:
        if self.pid() is None:
            return False
        status, nodes = api(self.settings, "GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
        ready = (
            [n for n in (nodes or {}).get("items", []) if node_ready(n)] if status == 200 else []
        )
        return len(ready) >= NODES

    def start(self) -> None:
        proc = spawn(
            [
                str(self.binary()),
                f"--kubeconfig={kubeconfig_path(self.settings)}",
                f"--config={kwok_stages(self.settings.tools_dir)}",
                f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
            ],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        for index in range(NODES):
            status, body = api(self.settings, "POST", "/api/v1/nodes", fake_node(index))
            if status not in (201, 409):
                raise StartError(f"creating fake node {index} answered {status}: {body}")
        wait_until(self.healthy, timeout=60, what=self.name, log=self.log, proc=proc)


def node_components(settings: Settings) -> list[Component]:
    """Controller manager, scheduler and kwok, in start order."""
    return [KubeControllerManager(settings), KubeScheduler(settings), Kwok(settings)]
