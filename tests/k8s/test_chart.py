"""The Helm chart: lint, render, validate against Kubernetes' own schemas, install.

Rendering uses `--kube-version` (Helm built with `go install` otherwise assumes 1.20)
and, for the production values, the API versions of the operators those values use
(Prometheus Operator, KEDA, cert-manager), as a cluster that has them would report.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubekit import CHART, KUBE_VERSION
from kubernetes import client

from lastro.core import registry
from lastro.core.config import load_settings

Helm = Callable[..., subprocess.CompletedProcess[str]]

PRODUCTION = CHART / "values-production.yaml"
BAD_VALUES = Path(__file__).parent / "data" / "bad-values.yaml"
CLUSTER_EXTRAS = [
    "--api-versions=monitoring.coreos.com/v1",
    "--api-versions=keda.sh/v1alpha1/ScaledObject",
    "--api-versions=cert-manager.io/v1",
]
# Kinds that come from those operators' CRDs: kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject", "Certificate"}
VALUE_FILES = {"default": [], "production": ["-f", str(PRODUCTION)]}


def render(helm: Helm, *args: str, release: str = "lastro") -> list[dict[str, Any]]:
    result = helm(
        "template", release, str(CHART), "-n", "lastro", f"--kube-version={KUBE_VERSION}", *args
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module")
def default_docs(helm: Helm) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def production_docs(helm: Helm) -> list[dict[str, Any]]:
    return render(helm, "-f", str(PRODUCTION), *CLUSTER_EXTRAS)


@pytest.mark.parametrize("values", sorted(VALUE_FILES))
def test_helm_lint_strict_passes(helm: Helm, values: str) -> None:
    result = helm(
        "lint", "--strict", str(CHART), f"--kube-version={KUBE_VERSION}", *VALUE_FILES[values]
    )
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", sorted(VALUE_FILES))
def test_every_rendered_manifest_validates_for_the_kube_version(helm: Helm, values: str) -> None:
    docs = render(helm, *VALUE_FILES[values], *CLUSTER_EXTRAS)
    minor = ".".join(KUBE_VERSION.split(".")[:2])
    validated = set()
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, minor, strict=True)
        validated.add(doc["kind"])
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ConfigMap",
    } <= validated


def test_the_validator_refuses_what_the_api_server_would(
    default_docs: list[dict[str, Any]],
) -> None:
    deployment = next(d for d in default_docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    deployment["spec"]["replicaz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, ".".join(KUBE_VERSION.split(".")[:2]), strict=True)


def test_the_values_schema_rejects_a_bad_values_file(helm: Helm) -> None:
    result = helm(
        "template",
        "lastro",
        str(CHART),
        f"--kube-version={KUBE_VERSION}",
        "-f",
        str(BAD_VALUES),
        check=False,
    )
    assert result.returncode != 0
    for complaint in [
        "/image/pullPolicy",
        "/config/logLevel",
        "/services/accounts/kind",
        "/services/accounts/port",
        "/services/transactions-worker/autoscaling/minReplicas",
        "/containerSecurityContext/readOnlyRootFilesystem",
        "/lagAutoscaling/provider",
        "replicaCout",
    ]:
        assert complaint in result.stderr, complaint


def test_one_deployment_per_service_all_from_one_image(default_docs: list[dict[str, Any]]) -> None:
    deployments = by_kind(default_docs, "Deployment")
    served = {}
    for deployment in deployments.values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == "serve"
        served[container["args"][1]] = container["image"]
    assert set(served) == {
        "identity",
        "accounts",
        "transactions",
        "transactions-worker",
        "fraud",
        "fraud-analyser",
        "notifications",
        "operator",
    }
    assert len(set(served.values())) == 1


def test_the_dev_fakes_run_only_when_asked(helm: Helm) -> None:
    docs = render(helm, "--set", "services.fx.enabled=true", "--set", "services.sms.enabled=true")
    served = {
        d["spec"]["template"]["spec"]["containers"][0]["args"][1]
        for d in docs
        if d["kind"] == "Deployment"
    }
    assert {"fx", "sms"} <= served
    assert "acquirer" not in served


@pytest.mark.parametrize("values", sorted(VALUE_FILES))
def test_every_pod_runs_with_the_secure_defaults(helm: Helm, values: str) -> None:
    for deployment in by_kind(
        render(helm, *VALUE_FILES[values], *CLUSTER_EXTRAS), "Deployment"
    ).values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_only_the_operator_can_talk_to_the_kubernetes_api(
    default_docs: list[dict[str, Any]],
) -> None:
    for name, deployment in by_kind(default_docs, "Deployment").items():
        mounted = deployment["spec"]["template"]["spec"]["automountServiceAccountToken"]
        assert mounted is name.endswith("-operator"), name


def test_credentials_come_only_from_existing_secrets(production_docs: list[dict[str, Any]]) -> None:
    assert not by_kind(production_docs, "Secret")
    for deployment in by_kind(production_docs, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for variable in container["env"]:
                if any(word in variable["name"] for word in ("PASSWORD", "TOKEN", "SECRET")):
                    assert "secretKeyRef" in variable["valueFrom"], variable["name"]


def _env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {variable["name"]: variable for variable in container["env"]}


def test_every_process_samples_traces_at_the_configured_ratio(
    default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]], helm: Helm
) -> None:
    for docs, ratio in ((default_docs, "1"), (production_docs, "0.1")):
        for name, deployment in by_kind(docs, "Deployment").items():
            env = _env(deployment)
            assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio", name
            assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == ratio, name
    refused = helm(
        "template", "lastro", str(CHART), f"--kube-version={KUBE_VERSION}",
        "--set", "config.traceSampleRatio=2", check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "traceSampleRatio" in refused.stderr


@pytest.mark.parametrize("values", sorted(VALUE_FILES))
def test_accounts_gets_its_privacy_fan_out_client_from_a_secret(helm: Helm, values: str) -> None:
    deployments = by_kind(render(helm, *VALUE_FILES[values], *CLUSTER_EXTRAS), "Deployment")
    env = _env(deployments["lastro-accounts"])
    for name, key in (
        ("LASTRO_PRIVACY_CLIENT_ID", "client-id"),
        ("LASTRO_PRIVACY_CLIENT_SECRET", "client-secret"),
    ):
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": "lastro-accounts-privacy",
            "key": key,
        }
    for other in ("lastro-identity", "lastro-fraud", "lastro-notifications"):
        assert "LASTRO_PRIVACY_CLIENT_ID" not in _env(deployments[other]), other


def test_the_privacy_client_secret_name_is_required(helm: Helm) -> None:
    result = helm(
        "template",
        "lastro",
        str(CHART),
        f"--kube-version={KUBE_VERSION}",
        "--set",
        "services.accounts.privacyClient.existingSecret=",
        check=False,
    )
    assert result.returncode != 0
    assert "privacyClient/existingSecret" in result.stderr or "is required" in result.stderr


def test_names_are_dns_labels_even_for_a_long_release_name(helm: Helm) -> None:
    release = "a-long-release-name-for-a-payments-platform-" + uuid.uuid4().hex[:8]
    assert len(release) == 52  # Helm's own limit is 53
    docs = render(helm, release=release)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert not doc["metadata"]["name"].endswith("-")
    deployments = by_kind(docs, "Deployment")
    assert len(deployments) == 8  # no two components truncated to the same name
    assert any(name.endswith("-transactions-worker") for name in deployments)


def test_selectors_use_only_name_instance_and_component(default_docs: list[dict[str, Any]]) -> None:
    for deployment in by_kind(default_docs, "Deployment").values():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert set(selector) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }


def test_api_services_scale_on_cpu_and_workers_on_consumer_lag(
    default_docs: list[dict[str, Any]],
) -> None:
    hpas = by_kind(default_docs, "HorizontalPodAutoscaler")
    cpu = hpas["lastro-accounts"]["spec"]["metrics"][0]
    assert cpu["resource"]["name"] == "cpu"
    lag = hpas["lastro-transactions-worker"]["spec"]["metrics"][0]["external"]
    assert lag["metric"]["name"] == "kafka_consumergroup_lag"
    assert lag["metric"]["selector"]["matchLabels"] == {
        "consumergroup": "lastro-transactions-worker",
        "topic": "lastro.transactions.commands",
    }
    assert not by_kind(default_docs, "ScaledObject")


def test_with_keda_installed_workers_get_a_scaled_object_instead(
    production_docs: list[dict[str, Any]],
) -> None:
    scaled = by_kind(production_docs, "ScaledObject")
    assert set(scaled) == {"lastro-transactions-worker", "lastro-fraud-analyser"}
    trigger = scaled["lastro-fraud-analyser"]["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "lastro-fraud-analyser"
    hpas = by_kind(production_docs, "HorizontalPodAutoscaler")
    assert not {"lastro-transactions-worker", "lastro-fraud-analyser"} & set(hpas)


def test_the_prometheus_rule_ships_the_repository_alert_file(
    production_docs: list[dict[str, Any]],
) -> None:
    (rule,) = by_kind(production_docs, "PrometheusRule").values()
    alerts = yaml.safe_load((CHART / "files" / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_the_grafana_dashboard_is_the_repository_json(default_docs: list[dict[str, Any]]) -> None:
    (dashboards,) = by_kind(default_docs, "ConfigMap").values()
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "files" / "grafana" / "lastro-money-path.json").read_text()
    assert dashboards["data"]["lastro-money-path.json"] == shipped


def test_the_ingress_publishes_public_routes_only(production_docs: list[dict[str, Any]]) -> None:
    (ingress,) = by_kind(production_docs, "Ingress").values()
    paths = {
        p["path"]: p["backend"]["service"]["name"]
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
    }
    assert paths["/oauth"] == "lastro-identity"
    assert paths["/v1/transfers"] == "lastro-transactions"
    assert not [p for p in paths if p.startswith("/internal")]


def _allowed_callers(policy: dict[str, Any]) -> set[str]:
    callers = set()
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from", []):
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            if "namespaceSelector" not in peer and "app.kubernetes.io/component" in labels:
                callers.add(labels["app.kubernetes.io/component"])
    return callers


def test_network_policies_deny_by_default_and_open_only_the_call_graph(
    default_docs: list[dict[str, Any]],
) -> None:
    policies = by_kind(default_docs, "NetworkPolicy")
    deny = policies["lastro-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    assert _allowed_callers(policies["lastro-fraud"]) == {
        "transactions",
        "transactions-worker",
        "accounts",
        "operator",
    }
    # accounts reaches itself, fraud and notifications for data-subject requests
    assert _allowed_callers(policies["lastro-accounts"]) == {
        "accounts",
        "transactions",
        "transactions-worker",
        "notifications",
        "operator",
    }
    assert "accounts" in _allowed_callers(policies["lastro-notifications"])
    # A worker answers no one: only Prometheus, on its metrics port.
    (scrape,) = policies["lastro-fraud-analyser"]["spec"]["ingress"]
    assert not _allowed_callers(policies["lastro-fraud-analyser"])
    assert "namespaceSelector" in scrape["from"][0]
    assert scrape["ports"] == [{"port": registry.service("fraud-analyser").port, "protocol": "TCP"}]
    assert policies["lastro-operator"]["spec"]["ingress"] == []


def test_the_operator_gets_a_namespaced_least_privilege_role(
    default_docs: list[dict[str, Any]],
) -> None:
    assert not [d for d in default_docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = by_kind(default_docs, "Role").values()
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert ("lastro.io", "fraudrules/status", "patch") in granted
    assert ("", "events", "create") in granted
    assert not [g for g in granted if g[1] in ("secrets", "pods", "*") or g[2] in ("*", "delete")]


@pytest.fixture(scope="module")
def release_namespace(api_client: client.ApiClient) -> Any:
    core = client.CoreV1Api(api_client)
    name = f"lastro-helm-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _eventually(read: Callable[[], Any], check: Callable[[Any], bool], seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while not check(value := read()):
        assert time.monotonic() < deadline, f"not within {seconds}s: {value}"
        time.sleep(0.5)
    return value


def _pods(api_client: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.CoreV1Api(api_client).list_namespaced_pod(namespace).items)


@pytest.mark.usefixtures("crds_installed")
def test_helm_install_upgrade_and_uninstall_against_the_api_server(
    helm: Helm, api_client: client.ApiClient, release_namespace: str
) -> None:
    """`--wait` completes because kwok's fake nodes run the scheduled Pods (no kubelet)."""
    apps = client.AppsV1Api(api_client)
    namespace = release_namespace
    helm("install", "lastro", str(CHART), "-n", namespace, "--wait", "--timeout", "3m")
    deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(namespace).items}
    assert len(deployments) == 8
    for name, deployment in deployments.items():
        assert deployment.status.available_replicas == deployment.spec.replicas, name
    assert deployments["lastro-operator"].spec.strategy.type == "Recreate"
    # The HPA (no metrics API here) still holds the Deployment at its minReplicas.
    accounts = _eventually(
        lambda: [
            p
            for p in _pods(api_client, namespace)
            if p.metadata.name.startswith("lastro-accounts-") and p.status.phase == "Running"
        ],
        lambda pods: len(pods) == 2,
    )
    assert len({p.spec.node_name for p in accounts}) == 2  # anti-affinity spreads them
    policy = client.PolicyV1Api(api_client)
    budget = _eventually(
        lambda: policy.read_namespaced_pod_disruption_budget("lastro-accounts", namespace),
        lambda pdb: pdb.status.current_healthy == 2,
    )
    assert budget.status.disruptions_allowed == 1
    roles = client.RbacAuthorizationV1Api(api_client).list_namespaced_role(namespace).items
    assert [r.metadata.name for r in roles] == ["lastro-operator"]

    helm(
        "upgrade",
        "lastro",
        str(CHART),
        "-n",
        namespace,
        "--wait",
        "--timeout",
        "3m",
        "--set",
        "image.tag=0.1.1",
        "--set",
        "services.fx.enabled=true",
    )
    # `--wait` returns once enough new Pods are ready (replicas - maxUnavailable); the
    # rollout then finishes by removing the last old Pod, which the controller does next.
    accounts_deployment = _eventually(
        lambda: apps.read_namespaced_deployment("lastro-accounts", namespace),
        lambda d: d.status.updated_replicas == d.status.available_replicas == d.status.replicas,
    )
    assert accounts_deployment.spec.template.spec.containers[0].image.endswith(":0.1.1")
    assert accounts_deployment.status.updated_replicas == 2
    assert apps.read_namespaced_deployment("lastro-fx", namespace).status.available_replicas == 1
    history = helm("history", "lastro", "-n", namespace, "-o", "yaml").stdout
    assert [entry["revision"] for entry in yaml.safe_load(history)] == [1, 2]

    helm("uninstall", "lastro", "-n", namespace, "--wait", "--timeout", "2m")
    assert not apps.list_namespaced_deployment(namespace).items
    assert not client.CoreV1Api(api_client).list_namespaced_service(namespace).items


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented_with_a_param_line() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    documented = set(re.findall(r"^## @param (\S+)", text, re.MULTILINE))
    undocumented = [
        leaf
        for leaf in _leaves(values)
        if not any(leaf == path or leaf.startswith(f"{path}.") for path in documented)
    ]
    assert not undocumented
    leaves = set(_leaves(values))
    stale = [
        p for p in documented if not any(leaf == p or leaf.startswith(f"{p}.") for leaf in leaves)
    ]
    assert not stale


def test_chart_ports_are_the_registry_ports_for_every_process(
    default_docs: list[dict[str, Any]],
) -> None:
    """The processes listen on lastro/core/registry.py's ports (the chart sets none), so
    the chart's values, containers, probes, Services and ServiceMonitors must name them."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployments = by_kind(default_docs, "Deployment")
    services = by_kind(default_docs, "Service")
    for spec in registry.SERVICES:
        if spec.kind == "operator":
            continue
        entry = values["services"][spec.name]
        assert (entry["kind"], entry["port"]) == (spec.kind, spec.port), spec.name
    assert set(values["services"]) == {s.name for s in registry.SERVICES if s.kind != "operator"}
    # The operator's one port is its liveness endpoint, which the chart sets explicitly.
    assert (
        values["operator"]["healthPort"] == load_settings({}, data_plane=False).operator_health_port
    )

    for spec in registry.SERVICES:
        deployment = deployments.get(f"lastro-{spec.name}")
        if deployment is None:  # the simulated third parties run only when asked
            assert spec.kind == "external", spec.name
            continue
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if spec.kind == "operator":
            assert ports == {"health": values["operator"]["healthPort"]}
            continue
        assert ports == {"https": spec.port}, spec.name
        assert container["readinessProbe"]["httpGet"] == {
            "path": "/readyz",
            "port": "https",
            "scheme": "HTTPS",
        }
        (service_port,) = services[f"lastro-{spec.name}"]["spec"]["ports"]
        assert service_port["port"] == spec.port, spec.name


def test_workers_are_scraped_on_their_registry_port(
    production_docs: list[dict[str, Any]],
) -> None:
    monitors = by_kind(production_docs, "ServiceMonitor")
    for worker in ("transactions-worker", "fraud-analyser"):
        (endpoint,) = monitors[f"lastro-{worker}"]["spec"]["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == ("https", "/metrics")
