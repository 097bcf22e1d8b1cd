"""Observability of the running stack: every process's /metrics passes promtool, the
local Prometheus scrapes them all and loads the repository's rules, the dashboard's
queries are valid PromQL, a stuck consumer really fires its alert, and one trace
follows a request through the outbox and Kafka to a consumer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from cryptography import x509
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.core.events import CloudEvent, EventConsumer, EventSigner, inbox_table, new_event
from lastro.core.observability import file_span_exporter
from lastro.core.security.tls import client_context
from lastro.core.security.transit import TransitClient
from lastro.dashboards import DASHBOARDS, expressions, render
from lastro.demo import Api, operator_token, register_service
from lastro.devstack.bootstrap import bootstrap_promtool
from lastro.devstack.components import Service, available_services, components, traces_dir
from lastro.devstack.prometheus import reload, rules_file

HERE = Path(__file__).parent
TOPIC = "lastro.platform.test"


def lastro(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastro.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def fetch(settings: Settings, url: str, token: str | None = None) -> bytes:
    request = urllib.request.Request(url)  # noqa: S310 - the stack's own URLs
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
        body: bytes = response.read()
        return body


def prometheus(settings: Settings, path: str, **query: str) -> Any:
    """GET the local Prometheus's HTTP API; its ``data`` (a 4xx raises HTTPError)."""
    url = f"https://{settings.host}:{settings.prometheus_port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    answer = json.loads(fetch(settings, url))
    assert answer["status"] == "success", answer
    return answer["data"]


def eventually(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")


def test_every_processs_metrics_pass_promtool(settings: Settings) -> None:
    promtool = bootstrap_promtool()
    services = [c for c in components(settings) if isinstance(c, Service)]
    assert {s.name for s in services} >= {"identity", "accounts"}
    exposures = {s.name: fetch(settings, f"{s.address()}/metrics") for s in services}
    token = (settings.dev_dir / "secrets" / "kms_root_token").read_text().strip()
    exposures["kms"] = fetch(
        settings, f"{settings.vault_addr}/v1/sys/metrics?format=prometheus", token
    )
    for name, exposure in exposures.items():
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=exposure, capture_output=True, check=False
        )
        assert checked.returncode == 0, (name, checked.stdout + checked.stderr)
        assert exposure.strip(), name


def test_prometheus_scrapes_every_process_with_the_charts_service_label(
    settings: Settings,
) -> None:
    expected = {*available_services(), "kms"}

    def healthy() -> set[str]:
        targets = prometheus(settings, "/api/v1/targets")["activeTargets"]
        return {t["labels"]["lastro_service"] for t in targets if t["health"] == "up"}

    assert eventually(lambda: expected <= healthy(), 30, f"{expected} scraped")
    for target in prometheus(settings, "/api/v1/targets")["activeTargets"]:
        if target["labels"]["lastro_service"] in expected:
            assert target["scrapeUrl"].startswith("https://"), target["scrapeUrl"]


def test_prometheus_evaluates_every_rule_of_the_charts_file(settings: Settings) -> None:
    shipped = yaml.safe_load(rules_file().read_text())["groups"]
    wanted = {(g["name"], r.get("alert") or r.get("record")) for g in shipped for r in g["rules"]}

    def evaluated() -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (group["name"], rule["name"]): rule
            for group in prometheus(settings, "/api/v1/rules")["groups"]
            for rule in group["rules"]
            if group["file"] == str(rules_file())
        }

    loaded = eventually(
        lambda: (
            (found := evaluated()).keys() == wanted
            and all(r["health"] == "ok" for r in found.values())
            and found
        ),
        30,
        "every rule loaded and evaluated",
    )
    assert {name for _, name in loaded} >= {"LastroConsumerStuck", "LastroOutboxStuck"}


def test_every_dashboard_query_is_valid_promql(settings: Settings) -> None:
    for uid, build in DASHBOARDS.items():
        queries = expressions(render(build))
        assert queries, uid
        for expr in queries:
            promql = expr.replace("$__rate_interval", "1m").replace("$service", ".+")
            try:
                prometheus(settings, "/api/v1/query", query=promql)
            except urllib.error.HTTPError as error:
                raise AssertionError(f"{uid}: {expr}: {error.read().decode()}") from None


def test_a_malformed_query_is_refused_so_the_check_above_can_fail(settings: Settings) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        prometheus(settings, "/api/v1/query", query="sum by (le (rate(x[1m]))")
    assert refused.value.code == 400


def test_served_certificates_and_audit_chains_reach_prometheus(settings: Settings) -> None:
    def serving() -> dict[str, float]:
        data = prometheus(
            settings,
            "/api/v1/query",
            query='lastro_tls_certificate_expiry_timestamp_seconds{certificate="serving"}',
        )
        return {r["metric"]["lastro_service"]: float(r["value"][1]) for r in data["result"]}

    expiries = eventually(
        lambda: (found := serving()).keys() >= {"identity", "accounts"} and found, 30, "expiries"
    )
    for name, expiry in expiries.items():
        cert = x509.load_pem_x509_certificate(
            (settings.dev_dir / "ca" / f"{name}.pem").read_bytes()
        )
        assert expiry == cert.not_valid_after_utc.timestamp(), name

    intact = prometheus(settings, "/api/v1/query", query="lastro_audit_chain_intact")["result"]
    chains = {r["metric"]["schema"]: r["value"][1] for r in intact}
    assert chains.keys() >= {"identity", "accounts"} and set(chains.values()) == {"1"}


def test_collector_pauses_reach_prometheus_from_every_service(settings: Settings) -> None:
    def paused() -> dict[str, set[str]]:
        data = prometheus(settings, "/api/v1/query", query="lastro_gc_pause_seconds_count")
        found: dict[str, set[str]] = {}
        for series in data["result"]:
            labels = series["metric"]
            found.setdefault(labels["lastro_service"], set()).add(labels["generation"])
        return found

    wanted = {"identity", "accounts", "transactions", "fraud", "notifications"}
    found = eventually(lambda: (got := paused()).keys() >= wanted and got, 30, "gc pauses")
    assert all(generations == {"0", "1", "2"} for generations in found.values()), found


def test_audit_verify_all_checks_every_services_chain(settings: Settings) -> None:
    verified = lastro("audit", "verify", "--all")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    lines = verified.stdout.splitlines()
    for schema in ("identity", "accounts"):
        assert any(
            line.startswith(f"audit log of {schema}: ") and "chain intact" in line for line in lines
        ), verified.stdout


def test_dev_status_shows_prometheus_and_the_alerts_it_has_firing(settings: Settings) -> None:
    status = lastro("dev", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:] if line}
    assert rows.get("prometheus") == "healthy"
    assert any(line.startswith("alerts firing: ") for line in status.stdout.splitlines())


# ------------------------------------------------------------------ a stuck consumer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def short_window_copy(alert: str, run: str) -> dict[str, Any]:
    """The repository's rule for ``alert`` with its windows and ``for`` shortened (5m
    windows become 30s, ``for`` 15s), labelled with the run: the same expression,
    evaluated by the same Prometheus over the same scraped series, in a test's time."""
    for group in yaml.safe_load(rules_file().read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                copy = dict(rule)
                copy["expr"] = rule["expr"].replace("[5m]", "[30s]")
                copy["for"] = "15s"
                copy["labels"] = {**rule["labels"], "e2e_run": run}
                return {"groups": [{"name": f"e2e-{run}", "rules": [copy]}]}
    raise KeyError(alert)


@pytest.fixture
def stuck_consumer(settings: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The consumer process, scraped by the local Prometheus (a target file of its
    own) with a short-window copy of LastroConsumerStuck loaded; all removed after."""
    run = uuid.uuid4().hex[:10]
    group, port = f"e2e-stuck-{run}", free_port()
    home = settings.dev_dir / "prometheus"
    target = home / "targets" / f"e2e-{run}.json"
    rules = home / "rules.d" / f"e2e-{run}.yaml"
    log = (tmp_path / "consumer.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "stuck_consumer.py"),
            "--group",
            group,
            "--port",
            str(port),
            "--schema",
            f"e2e_stuck_{run}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LASTRO_DEV_DIR": str(settings.dev_dir)},
    )
    try:
        url = f"https://{settings.host}:{port}"
        eventually(lambda: _answers(settings, f"{url}/healthz"), 60, "the consumer process")
        target.write_text(
            json.dumps(
                [
                    {
                        "targets": [f"{settings.host}:{port}"],
                        "labels": {"lastro_service": "e2e-stuck-consumer"},
                    }
                ]
            )
        )
        rules.write_text(yaml.safe_dump(short_window_copy("LastroConsumerStuck", run)))
        reload(settings)
        yield {"run": run, "group": group, "process": process}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        target.unlink(missing_ok=True)
        rules.unlink(missing_ok=True)
        reload(settings)
        engine = create_engine(settings, name="e2e-cleanup")

        async def drop() -> None:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "e2e_stuck_{run}" CASCADE')
            await engine.dispose()

        asyncio.run(drop())


def _answers(settings: Settings, url: str) -> bool:
    try:
        fetch(settings, url)
    except OSError:
        return False
    return True


def _firing(settings: Settings, run: str, group: str) -> list[dict[str, Any]]:
    return [
        a
        for a in prometheus(settings, "/api/v1/alerts")["alerts"]
        if a["labels"].get("alertname") == "LastroConsumerStuck"
        and a["labels"].get("e2e_run") == run
        and a["labels"].get("consumer") == group
        and a["state"] == "firing"
    ]


@pytest.mark.slow
def test_a_consumer_stuck_under_load_fires_its_alert_in_the_local_prometheus(
    settings: Settings, stuck_consumer: dict[str, Any]
) -> None:
    run, group = stuck_consumer["run"], stuck_consumer["group"]
    load = _Load(settings, run)
    load.start()
    try:
        applied = f'lastro_events_applied_total{{consumer="{group}"}}'

        def consuming() -> bool:
            result = prometheus(settings, "/api/v1/query", query=applied)["result"]
            return bool(result) and float(result[0]["value"][1]) > 20

        eventually(consuming, 90, "Prometheus to see the consumer applying the load")
        time.sleep(20)  # healthy under load for longer than the short windows: quiet
        assert _firing(settings, run, group) == []

        # The consumer hangs on its next record; the load goes on.
        stuck_consumer["process"].send_signal(signal.SIGUSR1)
        fired = eventually(lambda: _firing(settings, run, group), 180, "LastroConsumerStuck")
        (alert,) = fired
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["lastro_service"] == "e2e-stuck-consumer"
        assert float(alert["value"]) > 0  # the lag the consumer kept reporting while stuck
        status = lastro("dev", "status")
        assert any(
            "LastroConsumerStuck" in line and f"consumer={group}" in line
            for line in status.stdout.splitlines()
        ), status.stdout
    finally:
        load.stop()


class _Load:
    """Signed events to the test topic, ten a second, from a thread of its own."""

    def __init__(self, settings: Settings, run: str) -> None:
        self.settings, self.run = settings, run
        self._stop = False
        self._thread: Any = None

    def start(self) -> None:
        import threading

        self._thread = threading.Thread(target=lambda: asyncio.run(self._produce()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=30)

    async def _produce(self) -> None:
        transit = TransitClient.from_settings(self.settings)
        signer = await EventSigner.from_transit(transit, self.settings.events_key_name)
        await transit.close()
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap)
        await producer.start()
        try:
            n = 0
            while not self._stop:
                event = new_event(
                    "lastro.platform.test_happened", "/e2e", {"run": self.run, "n": n}
                )
                envelope = json.dumps(signer.sign(event.envelope())).encode()
                await producer.send(TOPIC, envelope, key=f"{self.run}-{n % 3}".encode())
                n += 1
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()


# ------------------------------------------------------------------ one trace


async def test_one_trace_follows_a_request_through_the_outbox_and_kafka_to_a_consumer(
    settings: Settings, recorded_spans: InMemorySpanExporter
) -> None:
    directory = traces_dir(settings)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)  # set by recorded_spans
    provider.add_span_processor(SimpleSpanProcessor(file_span_exporter(directory / "tests.jsonl")))
    run = uuid.uuid4().hex[:10]
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]

    schema = f"e2e_trace_{run}"
    engine = create_engine(settings, name="e2e-trace")
    metadata = MetaData(schema=schema)
    inbox = inbox_table(metadata)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        await conn.run_sync(metadata.create_all)
    transit = TransitClient.from_settings(settings)
    signer = await EventSigner.from_transit(transit, settings.events_key_name)
    await transit.close()
    ours: list[str] = []

    async def apply(conn: AsyncConnection, event: CloudEvent) -> None:
        if event.traceparent and event.traceparent.split("-")[1] == trace_id:
            ours.append(event.type)

    consumer = EventConsumer(
        name=f"e2e-trace-{run}",
        topics=["lastro.accounts"],
        bootstrap_servers=settings.kafka_bootstrap,
        engine=engine,
        inbox=inbox,
        signer=signer,
        apply=apply,
    )
    await consumer.start()
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(stop))
    try:
        connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
        async with aiohttp.ClientSession(connector=connector) as http:
            identity = Api(http, settings.service_url("identity"))
            accounts = Api(http, settings.service_url("accounts"))
            admin = await operator_token(identity, settings)
            _, token = await register_service(
                identity, admin, f"e2e-trace-{run}", ["accounts:admin", "ledger:write"], "accounts"
            )
            opened = await accounts.call(
                "POST",
                "/internal/v1/accounts",
                token=token,
                expect=201,
                json={"currency": "EUR", "purpose": "settlement"},
                headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
            )
        for _ in range(600):
            if ours:
                break
            await asyncio.sleep(0.1)
        assert ours, "the consumer never saw the account's event"
    finally:
        stop.set()
        await consuming
        await consumer.stop()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        await engine.dispose()

    def spans() -> list[dict[str, Any]]:
        found = []
        for path in directory.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                if f'"trace_id": "{trace_id}"' in line:
                    found.append(json.loads(line))
        return found

    # The accounts process exports in batches (every few seconds).
    every = eventually(
        lambda: (
            (s := spans()) and {x["kind"] for x in s} >= {"SERVER", "PRODUCER", "CONSUMER"} and s
        ),
        30,
        "the request's, the relay's and the consumer's spans in the trace files",
    )
    # (accounts may also have called identity for its signing keys: that call is in the
    # trace too, as a CLIENT span and identity's SERVER span under it)
    server = next(s for s in every if s["kind"] == "SERVER" and s["service"] == "lastro-accounts")
    assert server["parent_span_id"] == caller_span
    assert server["attributes"]["http.route"] == "/internal/v1/accounts"
    publish = next(
        s for s in every if s["kind"] == "PRODUCER" and s["name"] == "publish lastro.accounts"
    )
    assert publish["service"] == "lastro-accounts"
    assert publish["parent_span_id"] in {
        s["span_id"] for s in every if s["service"] == "lastro-accounts"
    }
    consume = next(s for s in every if s["kind"] == "CONSUMER" and s["service"] == "lastro-tests")
    assert consume["parent_span_id"] == publish["span_id"]
    assert opened["id"]

    shown = lastro("trace", "show", trace_id)
    assert shown.returncode == 0, shown.stderr
    assert "POST /internal/v1/accounts" in shown.stdout
    assert "publish lastro.accounts" in shown.stdout and "consume lastro.accounts" in shown.stdout
