"""The local Prometheus: Debian's ``prometheus`` package, run by `lastro dev up`.

It listens on ``settings.prometheus_port`` over HTTPS (a dev-CA certificate, like
every local endpoint), keeps a small TSDB under ``.dev/prometheus/data`` (3 days,
256 MB at most), and:

* scrapes every process the stack runs (``core/registry.py`` through
  ``available_services``) over TLS verified against the dev CA, with the
  ``lastro_service`` label the chart's ServiceMonitors set, and the KMS's
  ``/v1/sys/metrics?format=prometheus`` with its token (``lastro_service="kms"``);
  the targets are file-discovered from ``.dev/prometheus/targets/*.json``, so a test
  can add a process of its own by dropping a file there;
* evaluates the repository's alert rules, the chart's own file
  ``charts/lastro/files/prometheus/alerts.yaml`` read in place (one file, shared),
  plus any ``.dev/prometheus/rules.d/*.yaml`` (tests put short-window copies there);
* reloads its configuration on ``POST /-/reload`` (``--web.enable-lifecycle``),
  which `lastro dev up` and :func:`reload` send.

:func:`alerts` reads the alerts it holds (``GET /api/v1/alerts``), which
`lastro dev status` prints.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from lastro.core.config import Settings
from lastro.devstack.base import Component
from lastro.devstack.bootstrap import PROMETHEUS
from lastro.devstack.ca import DevCA
from lastro.devstack.processes import spawn, wait_until

SCRAPE_INTERVAL: Final = "5s"
RETENTION_TIME: Final = "3d"
RETENTION_SIZE: Final = "256MB"
STACK_TARGETS: Final = "stack.json"


def rules_file() -> Path:
    """The repository's alert rules (the chart ships the same file)."""
    root = Path(__file__).resolve().parents[3]
    return root / "charts" / "lastro" / "files" / "prometheus" / "alerts.yaml"


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def scrape_targets(settings: Settings, services: list[str]) -> list[dict[str, Any]]:
    """file_sd groups: one per process, labelled as the chart labels it."""
    return [
        {"targets": [_hostport(settings.service_url(name))], "labels": {"lastro_service": name}}
        for name in services
    ]


def config(settings: Settings, home: Path, rules: Path | None) -> dict[str, Any]:
    """The ``prometheus.yml`` of the local stack (module docstring)."""
    tls = {"ca_file": str(settings.ca_file)}
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": "4s",
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"stack": "lastro-dev"},
        },
        "rule_files": [*([str(rules)] if rules is not None else []), str(home / "rules.d/*.yaml")],
        "scrape_configs": [
            {
                "job_name": "lastro",
                "scheme": "https",
                "tls_config": tls,
                "file_sd_configs": [{"files": [str(home / "targets" / "*.json")]}],
            },
            {
                "job_name": "kms",
                "scheme": "https",
                "metrics_path": "/v1/sys/metrics",
                "params": {"format": ["prometheus"]},
                "authorization": {
                    "type": "Bearer",
                    "credentials_file": str(settings.dev_dir / "secrets" / "kms_root_token"),
                },
                "tls_config": tls,
                "static_configs": [
                    {
                        "targets": [_hostport(settings.vault_addr)],
                        "labels": {"lastro_service": "kms"},
                    }
                ],
            },
        ],
    }


class Prometheus(Component):
    """The dev stack's Prometheus (module docstring); ``services`` are the processes
    it scrapes besides the KMS."""

    name = "prometheus"

    def __init__(self, settings: Settings, services: list[str]) -> None:
        super().__init__(settings)
        self.services = services

    @property
    def url(self) -> str:
        return f"https://{self.settings.host}:{self.settings.prometheus_port}"

    def address(self) -> str:
        return self.url

    def healthy(self) -> bool:
        try:
            _request(self.settings, f"{self.url}/-/ready")
        except OSError:
            return False
        return True

    def write_files(self) -> Path:
        """prometheus.yml, web.yml (TLS) and the stack's targets; returns the config."""
        for sub in ("data", "targets", "rules.d"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        issued = DevCA(self.settings.dev_dir / "ca").issue(self.name)
        web = self.dir / "web.yml"
        web.write_text(
            yaml.safe_dump(
                {"tls_server_config": {"cert_file": str(issued.cert), "key_file": str(issued.key)}}
            )
        )
        rules = rules_file()
        conf = self.dir / "prometheus.yml"
        conf.write_text(
            yaml.safe_dump(config(self.settings, self.dir, rules if rules.exists() else None))
        )
        targets = self.dir / "targets" / STACK_TARGETS
        targets.write_text(json.dumps(scrape_targets(self.settings, self.services), indent=2))
        return conf

    def start(self) -> None:
        conf = self.write_files()
        proc = spawn(
            [
                PROMETHEUS,
                f"--config.file={conf}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION_TIME}",
                f"--storage.tsdb.retention.size={RETENTION_SIZE}",
                f"--web.listen-address={self.settings.host}:{self.settings.prometheus_port}",
                f"--web.config.file={self.dir / 'web.yml'}",
                f"--web.external-url={self.url}/",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        wait_until(self.healthy, timeout=60, what="Prometheus", log=self.log, proc=proc)

    def up(self) -> str:
        """Start, or rewrite the files and reload a running one (rules or targets changed)."""
        if self.healthy():
            self.write_files()
            reload(self.settings)
            return "already running (reloaded)"
        self.start()
        return "started"


def _request(settings: Settings, url: str, method: str = "GET") -> Any:
    """One HTTPS request to the local Prometheus; its JSON answer (None if not JSON)."""
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    request = urllib.request.Request(url, method=method)  # noqa: S310 - the stack's own URL
    with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
        body = response.read()
    try:
        return json.loads(body)
    except ValueError:
        return None


def reload(settings: Settings) -> None:
    """Make the running Prometheus re-read its configuration and rule files."""
    _request(settings, f"https://{settings.host}:{settings.prometheus_port}/-/reload", "POST")


@dataclass(frozen=True)
class Alert:
    name: str
    state: str  # "firing" or "pending"
    labels: dict[str, str]
    active_at: str
    summary: str


def alerts(settings: Settings) -> list[Alert]:
    """The alerts the local Prometheus holds (firing and pending), firing first."""
    url = f"https://{settings.host}:{settings.prometheus_port}/api/v1/alerts"
    found = [
        Alert(
            name=raw["labels"].get("alertname", ""),
            state=raw["state"],
            labels={k: v for k, v in raw["labels"].items() if k != "alertname"},
            active_at=raw.get("activeAt", ""),
            summary=raw.get("annotations", {}).get("summary", ""),
        )
        for raw in _request(settings, url)["data"]["alerts"]
    ]
    return sorted(found, key=lambda a: (a.state != "firing", a.name, sorted(a.labels.items())))


def render_alerts(found: list[Alert]) -> str:
    firing = [a for a in found if a.state == "firing"]
    pending = len(found) - len(firing)
    lines = [f"alerts firing: {len(firing)}" + (f" ({pending} pending)" if pending else "")]
    for alert in firing:
        where = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if k != "severity")
        severity = alert.labels.get("severity", "-")
        lines.append(f"  {severity:<9}{alert.name:<34}{where}  since {alert.active_at[:19]}")
        if alert.summary:
            lines.append(f"           {alert.summary}")
    return "\n".join(lines)
