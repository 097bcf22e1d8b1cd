"""The local Prometheus's configuration: what it scrapes, how, with which labels and
rules; `promtool check config` accepts the files the dev stack writes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from lastro.core.config import Settings
from lastro.devstack.bootstrap import bootstrap_promtool
from lastro.devstack.ca import DevCA
from lastro.devstack.prometheus import Alert, Prometheus, render_alerts, rules_file


def test_every_process_is_scraped_over_tls_with_the_charts_label(
    unit_settings: Settings, dev_ca: DevCA
) -> None:
    prometheus = Prometheus(unit_settings, ["identity", "accounts", "transactions-worker"])
    conf = yaml.safe_load(prometheus.write_files().read_text())
    lastro, kms = conf["scrape_configs"]
    assert lastro["scheme"] == "https"
    assert lastro["tls_config"] == {"ca_file": str(unit_settings.ca_file)}
    targets = json.loads((prometheus.dir / "targets" / "stack.json").read_text())
    by_label = {t["labels"]["lastro_service"]: t["targets"] for t in targets}
    ports = unit_settings.service_ports
    assert by_label == {
        name: [f"127.0.0.1:{ports[name]}"]
        for name in ("identity", "accounts", "transactions-worker")
    }
    assert kms["metrics_path"] == "/v1/sys/metrics" and kms["params"] == {"format": ["prometheus"]}
    assert kms["static_configs"][0]["labels"] == {"lastro_service": "kms"}
    assert kms["authorization"]["credentials_file"].endswith("secrets/kms_root_token")
    assert conf["rule_files"][0] == str(rules_file())
    assert conf["rule_files"][1].endswith("rules.d/*.yaml")


def test_promtool_accepts_the_written_configuration(unit_settings: Settings, dev_ca: DevCA) -> None:
    token = unit_settings.dev_dir / "secrets" / "kms_root_token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("unit-token")
    conf = Prometheus(unit_settings, ["accounts"]).write_files()
    checked = subprocess.run(
        [bootstrap_promtool(), "check", "config", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    assert str(rules_file()) in checked.stdout  # and the rule file it names was checked


def test_firing_alerts_are_listed_with_their_labels_and_pending_ones_counted() -> None:
    shown = render_alerts(
        [
            Alert(
                "LastroConsumerStuck",
                "firing",
                {"severity": "critical", "consumer": "notifications"},
                "2026-11-30T06:00:00.123Z",
                "notifications has records waiting and applies none",
            ),
            Alert("LastroOutboxStuck", "pending", {"severity": "critical"}, "", ""),
        ]
    )
    assert shown.splitlines() == [
        "alerts firing: 1 (1 pending)",
        "  critical LastroConsumerStuck               consumer=notifications  since "
        "2026-11-30T06:00:00",
        "           notifications has records waiting and applies none",
    ]
    assert render_alerts([]) == "alerts firing: 0"


def test_the_rules_file_is_the_charts(tmp_path: Path) -> None:
    assert rules_file().parts[-5:] == ("charts", "lastro", "files", "prometheus", "alerts.yaml")
    assert rules_file().is_file()
