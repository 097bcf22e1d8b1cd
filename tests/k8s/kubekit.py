"""Helpers shared by the cluster-path tests (imported as `kubekit`, like eventkit)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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
    api = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
    kwargs: dict[str, Any] = {
        "body": document,
        "field_manager": FIELD_MANAGER,
        "force_conflicts": True,
    }
    if api.namespaced:
        kwargs["namespace"] = namespace or document["metadata"].get("namespace", "default")
    return api.server_side_apply(**kwargs)


def resource(dynamic: DynamicClient, kind: str) -> Any:
    return dynamic.resources.get(api_version="lastro.io/v1alpha1", kind=kind)


async def eventually(
    read: Callable[[], Any], check: Callable[[Any], bool], seconds: float = 30
) -> Any:
    """Poll ``read`` (a blocking API call, run in a thread) until ``check`` holds."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(read)
        if check(last):
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {seconds}s; last seen: {last}")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for entry in obj.get("status", {}).get("conditions") or []:
        if entry["type"] == kind:
            return dict(entry)
    return {}


def live_generation(generation: int) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status", {})
        return (
            status.get("observedGeneration") == generation
            and condition(obj, "Ready").get("status") == "True"
        )

    return check


def getter(
    dynamic: DynamicClient, kind: str, name: str, namespace: str
) -> Callable[[], dict[str, Any]]:
    return lambda: resource(dynamic, kind).get(name=name, namespace=namespace).to_dict()


async def delete_custom_resources(dynamic: DynamicClient, namespace: str) -> None:
    """Delete every FraudRule and RetentionPolicy in ``namespace`` and wait until they
    are gone. Call it while the operator still runs: its finalizer (on both kinds; Kopf
    also guards its timers with it) must not outlive it."""
    for kind in ("FraudRule", "RetentionPolicy"):
        kinds = resource(dynamic, kind)
        for item in kinds.get(namespace=namespace).to_dict()["items"]:
            kinds.delete(name=item["metadata"]["name"], namespace=namespace)
        await eventually(
            lambda r=kinds: r.get(namespace=namespace).to_dict()["items"],
            lambda items: not items,
        )
