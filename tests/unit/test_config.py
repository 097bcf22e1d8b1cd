"""Settings: defaults for the dev stack, clear errors naming the bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from lastro.core.config import ConfigError, load_settings


def test_defaults_match_the_documented_local_ports(tmp_path: Path) -> None:
    s = load_settings({"LASTRO_DEV_DIR": str(tmp_path)})
    assert (s.pg_port, s.redis_port, s.kafka_port, s.kms_port) == (15432, 16379, 19092, 8200)
    assert s.service_ports["accounts"] == 7002
    assert s.service_url("identity") == "https://127.0.0.1:7001"
    assert s.ca_file == tmp_path / "ca" / "ca.pem"


def test_dev_secrets_are_read_from_the_stack_files(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pg_password").write_text("s3cret\n")
    s = load_settings({"LASTRO_DEV_DIR": str(tmp_path)})
    assert s.pg_password == "s3cret"
    assert "s3cret@" in s.database_url


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LASTRO_PG_PORT", "fifteen", "LASTRO_PG_PORT must be an integer"),
        ("LASTRO_REDIS_PORT", "70000", "LASTRO_REDIS_PORT must be a TCP port"),
        ("LASTRO_ENV", "staging", "LASTRO_ENV must be one of"),
        ("LASTRO_PG_SSL", "maybe", "LASTRO_PG_SSL must be a boolean"),
        ("LASTRO_PG_USER", "robert'); drop", "LASTRO_PG_USER must be a lower-case SQL identifier"),
        (
            "LASTRO_TRANSACTIONS_FRAUD_FALLBACK_AFTER_MS",
            "-1",
            "LASTRO_TRANSACTIONS_FRAUD_FALLBACK_AFTER_MS must be zero or a positive integer",
        ),
    ],
)
def test_a_malformed_value_fails_naming_the_variable(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings({"LASTRO_DEV_DIR": str(tmp_path), variable: value})


def test_the_fraud_fallback_waits_five_seconds_unless_told_otherwise(tmp_path: Path) -> None:
    dev = {"LASTRO_DEV_DIR": str(tmp_path)}
    assert load_settings(dev).transactions.fraud_fallback_after_ms == 5000
    at_once = {**dev, "LASTRO_TRANSACTIONS_FRAUD_FALLBACK_AFTER_MS": "0"}
    assert load_settings(at_once).transactions.fraud_fallback_after_ms == 0


def test_production_requires_secrets_explicitly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LASTRO_PG_PASSWORD is required outside dev/test"):
        load_settings({"LASTRO_DEV_DIR": str(tmp_path), "LASTRO_ENV": "prod"})


def test_partner_credentials_come_from_the_stack_files_and_the_callback_url_from_ports(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "acquirer_api_key").write_text("acquirer_test_abc\n")
    (secrets / "acquirer_webhook_secret").write_text("whsec_xyz\n")
    s = load_settings({"LASTRO_DEV_DIR": str(tmp_path), "LASTRO_PORT_OFFSET": "3000"})
    assert s.partner_api_keys == {"fx": "", "acquirer": "acquirer_test_abc", "sms": ""}
    assert s.acquirer_webhook_secret == "whsec_xyz"
    assert s.acquirer_callback_url == ("https://127.0.0.1:10003/internal/v1/acquirer/settlements")


def test_partner_credentials_are_optional_in_production_and_taken_from_variables(
    tmp_path: Path,
) -> None:
    prod = {
        "LASTRO_DEV_DIR": str(tmp_path),
        "LASTRO_ENV": "prod",
        "LASTRO_PG_PASSWORD": "p",
        "LASTRO_VAULT_TOKEN": "t",
        "LASTRO_SMS_API_KEY": "sms_live_1",
        "LASTRO_ACQUIRER_CALLBACK_URL": "https://pay.example/settlements",
    }
    s = load_settings(prod)
    assert s.partner_api_keys == {"fx": "", "acquirer": "", "sms": "sms_live_1"}
    assert s.acquirer_webhook_secret == ""
    assert s.acquirer_callback_url == "https://pay.example/settlements"


def test_kubernetes_ports_and_tools_dir_default_and_override(tmp_path: Path) -> None:
    s = load_settings({"LASTRO_DEV_DIR": str(tmp_path)})
    assert (s.etcd_port, s.kube_apiserver_port) == (12379, 16443)
    assert s.tools_dir == Path.home() / ".cache" / "lastro" / "bin"
    s = load_settings(
        {
            "LASTRO_DEV_DIR": str(tmp_path),
            "LASTRO_ETCD_PORT": "22379",
            "LASTRO_KUBE_APISERVER_PORT": "26443",
            "LASTRO_TOOLS_DIR": str(tmp_path / "bin"),
        }
    )
    assert (s.etcd_port, s.kube_apiserver_port, s.tools_dir) == (22379, 26443, tmp_path / "bin")


def test_a_service_url_variable_replaces_the_local_address(tmp_path: Path) -> None:
    s = load_settings(
        {"LASTRO_DEV_DIR": str(tmp_path), "LASTRO_FRAUD_URL": "https://lastro-fraud:7004/"}
    )
    assert s.service_url("fraud") == "https://lastro-fraud:7004"
    assert s.service_url("accounts") == "https://127.0.0.1:7002"


def test_in_a_cluster_dependencies_and_the_bind_address_are_set_apart(tmp_path: Path) -> None:
    local = load_settings({"LASTRO_DEV_DIR": str(tmp_path)})
    assert (local.listen_host, local.redis_url, local.kafka_bootstrap) == (
        "127.0.0.1",
        "redis://127.0.0.1:16379/0",
        "127.0.0.1:19092",
    )
    pod = load_settings(
        {
            "LASTRO_DEV_DIR": str(tmp_path),
            "LASTRO_BIND_HOST": "0.0.0.0",  # noqa: S104
            "LASTRO_REDIS_HOST": "redis-master.data",
            "LASTRO_REDIS_PORT": "6379",
            "LASTRO_KAFKA_BOOTSTRAP": "kafka-0.kafka:9092,kafka-1.kafka:9092",
        }
    )
    assert pod.listen_host == "0.0.0.0"  # noqa: S104
    assert pod.redis_url == "redis://redis-master.data:6379/0"
    assert pod.kafka_bootstrap == "kafka-0.kafka:9092,kafka-1.kafka:9092"


def test_outside_dev_only_the_data_plane_must_have_database_and_vault_secrets(
    tmp_path: Path,
) -> None:
    prod = {"LASTRO_ENV": "prod", "LASTRO_DEV_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match="LASTRO_PG_PASSWORD is required outside dev/test"):
        load_settings(prod)
    operator = load_settings(prod, data_plane=False)
    assert (operator.pg_password, operator.vault_token) == ("", "")
