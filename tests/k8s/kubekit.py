"""Helpers shared by the cluster-path tests (imported as `kubekit`, like eventkit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes.dynamic import DynamicClient

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
POLICIES = ROOT / "policies"
CHART = ROOT / "charts" / "lastro"
KUBE_VERSION = "1.35.4"
FIELD_MANAGER = "lastro-tests"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def apply(dynamic: DynamicClient, document: dict[str, Any], namespace: str | None = None) -> Any:
    """Server-side apply, as `kubectl apply --server-side` does."""
    resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
    kwargs: dict[str, Any] = {
        "body": document,
        "field_manager": FIELD_MANAGER,
        "force_conflicts": True,
    }
    if resource.namespaced:
        kwargs["namespace"] = namespace or document["metadata"].get("namespace", "default")
    return resource.server_side_apply(**kwargs)
