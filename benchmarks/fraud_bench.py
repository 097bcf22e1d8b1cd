"""Screening over HTTPS: in-service latency and throughput at a fixed request rate.

    lastro dev up
    python benchmarks/fraud_bench.py --rate 500 --seconds 20 [--json out.json] [--profile]
    lastro bench fraud -- --rate 500 --seconds 20

Drives the running fraud service (``lastro serve fraud`` started by the dev stack)
the way the transaction service does: ``POST /internal/v1/screenings`` over HTTPS
with keep-alive and a real ``fraud:screen`` service token from the identity
service. Before the run it stores realistic profiles in Redis, built by replaying
the synthetic traffic of ``lastro fraud evaluate`` (seed ``--seed``) through the
profile code, under customer ids of this run only; the requests are the last
transactions of that traffic (so velocity, amount and travel features and the 19
default rules see what they would in production), each with a new transaction id.

The load is open-loop: request ``i`` is sent at ``start + i / rate`` whether or not
earlier ones were answered, so a slow service shows up as latency, not as a lower
request rate. Latency is reported twice:

- **in service**: the ``duration_ms`` the service's access log records for each
  request of this run (``core/http.py``: from the metrics middleware to the
  response: token check, contract validation, the screening use case);
- **client**: from sending to the parsed answer, TLS and the client included.

It also prints the machine's load average, the CPU the service process used, the
garbage collector's pauses in the service during the run (``lastro_gc_pause_seconds``
from its ``/metrics``), and what the run cost the stack (``lastro.devstack.costs``: a
reference piece of work timed before and after, for the machine's speed at the time, the CPU
per screening of every process and PostgreSQL's busiest statements). With
``--profile`` it records the service with py-spy (``pip install py-spy``) for the
measured window.

``--driver vegeta`` sends the same requests with vegeta, a load generator in Go
(``go install github.com/tsenart/vegeta/v12@latest``; found on ``PATH`` or in
``~/go/bin``), instead of this script's aiohttp client: on a small machine the
Python client needs most of a core at 500/s, which it takes from the service. Its
client latencies are vegeta's.

Two processes on one host, as two replicas would be: restart the stack's with
``LASTRO_REUSE_PORT=1 lastro dev restart fraud``, start a second one on the same
port (``LASTRO_REUSE_PORT=1 lastro serve fraud >> /tmp/fraud-2.log &``) and pass
``--also <its pid>:/tmp/fraud-2.log`` so its CPU and access log count too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings, load_settings
from lastro.core.db import engine_for
from lastro.core.security.tls import client_context
from lastro.demo import Api, operator_token, register_service
from lastro.devstack.components import Service
from lastro.devstack.costs import RunCosts, cost_lines
from lastro.devstack.cpu import cpu_seconds
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
from lastro.fraud.domain.transactions import Status, Transaction, TransactionEvent
from lastro.fraud.store.profiles import DEFAULT_PREFIX
from lastro.fraud.synthetic import Scenario, generate

PATH = "/internal/v1/screenings"


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 3),
            "mean": round(statistics.fmean(ordered), 3)}  # fmt: skip


def build_requests(
    seed: int, customers: int, count: int, run: str
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The last ``count`` transactions of the synthetic traffic as screening requests
    (ids of this run), and the profiles Redis should hold when they are screened."""
    labelled = generate(seed, Scenario(customers=customers, cases_per_typology=customers // 40))
    payers: dict[str, CustomerProfile] = {}
    payees: dict[str, CounterpartyProfile] = {}
    start = len(labelled) - count
    requests: list[dict[str, Any]] = []
    for index, label in enumerate(labelled):
        txn = label.txn
        if index >= start:
            requests.append(request_of(txn, run, index))
            continue
        payer = payers.setdefault(txn.customer_id, CustomerProfile(txn.customer_id))
        party = None if txn.is_incoming else txn.other_party
        event = TransactionEvent(Status.POSTED, txn)
        payer.apply(event)
        if party:
            payees.setdefault(party, CounterpartyProfile(party)).apply(event)
    stored: dict[str, bytes] = {}
    for customer, profile in payers.items():
        stored[f"{DEFAULT_PREFIX}:c:{customer}-{run}"] = replace_owner(profile, f"{customer}-{run}")
    for party, counterparty in payees.items():
        stored[f"{DEFAULT_PREFIX}:p:{party}-{run}"] = counterparty.to_bytes()
    return requests, stored


def replace_owner(profile: CustomerProfile, owner: str) -> bytes:
    profile.owner = owner
    return profile.to_bytes()


def request_of(txn: Transaction, run: str, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transaction_id": f"txn_bench_{run}_{index}",
        "type": txn.type.value,
        "amount": txn.amount,
        "currency": txn.currency,
        "customer_id": f"{txn.customer_id}-{run}",
        "occurred_at": txn.occurred_at.isoformat(),
    }
    party = txn.other_party
    if party is not None:
        body["counterparty"] = f"{party}-{run}"
    for name in ("source_account_id", "destination_account_id", "device_id", "ip", "country"):
        value = getattr(txn, name)
        if value is not None:
            body[name] = value
    if txn.location is not None:
        body["location"] = {"lat": txn.location.lat, "lon": txn.location.lon}
    return body


async def screening_token(settings: Settings, http: aiohttp.ClientSession, run: str) -> str:
    identity = Api(http, settings.service_url("identity"))
    admin = await operator_token(identity, settings)
    _, token = await register_service(
        identity, admin, f"fraud-bench-{run}", ["fraud:screen"], "fraud"
    )
    return token


async def load(
    http: aiohttp.ClientSession,
    base: str,
    token: str,
    requests: list[dict[str, Any]],
    rate: float,
    run: str,
    label: str,
) -> tuple[dict[str, float], dict[int, int], float]:
    """Send ``requests`` open-loop at ``rate``/s; client latency percentiles (ms),
    statuses, seconds."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {token}"}

    async def one(index: int, body: dict[str, Any]) -> None:
        sent = time.perf_counter()
        async with http.post(
            f"{base}{PATH}",
            json=body,
            headers={**headers, "X-Request-Id": f"bench-{run}-{label}-{index}"},
        ) as response:
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
        latencies.append((time.perf_counter() - sent) * 1000)

    began = time.perf_counter()
    tasks = []
    for index, body in enumerate(requests):
        due = began + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, body)))
    await asyncio.gather(*tasks)
    return percentiles(latencies), statuses, time.perf_counter() - began


def vegeta_binary() -> str:
    found = shutil.which("vegeta") or str(Path.home() / "go" / "bin" / "vegeta")
    if not Path(found).exists():
        raise SystemExit(
            "--driver vegeta needs vegeta: go install github.com/tsenart/vegeta/v12@latest"
        )
    return found


async def load_vegeta(
    settings: Settings,
    base: str,
    token: str,
    requests: list[dict[str, Any]],
    rate: float,
    run: str,
    label: str,
    connections: int,
) -> tuple[dict[str, float], dict[int, int], float]:
    """What :func:`load` does, sent by vegeta (open loop at ``rate``)."""
    vegeta = vegeta_binary()
    with tempfile.TemporaryDirectory(prefix="fraud-bench-") as scratch:
        targets, results = Path(scratch) / "targets.jsonl", Path(scratch) / "results.bin"
        with targets.open("w", encoding="utf-8") as out:
            for index, body in enumerate(requests):
                target = {
                    "method": "POST",
                    "url": f"{base}{PATH}",
                    "body": base64.b64encode(json.dumps(body).encode()).decode(),
                    "header": {
                        "Authorization": [f"Bearer {token}"],
                        "Content-Type": ["application/json"],
                        "X-Request-Id": [f"bench-{run}-{label}-{index}"],
                    },
                }
                out.write(json.dumps(target) + "\n")
        attack = [
            vegeta, "attack", "-format", "json", "-targets", str(targets),
            "-rate", f"{rate:g}/1s", "-duration", f"{len(requests) / rate:.3f}s",
            "-root-certs", str(settings.ca_file), "-http2=false",
            "-max-connections", str(connections), "-output", str(results),
        ]  # fmt: skip
        began = time.perf_counter()
        await asyncio.to_thread(subprocess.run, attack, check=True)
        seconds = time.perf_counter() - began
        reporter = await asyncio.create_subprocess_exec(
            vegeta, "report", "-type", "json", str(results), stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await reporter.communicate()
        report = json.loads(stdout)
    latencies = report["latencies"]  # nanoseconds
    names = {"p50": "50th", "p95": "95th", "p99": "99th", "max": "max", "mean": "mean"}
    client = {name: round(latencies[key] / 1e6, 3) for name, key in names.items()}
    statuses = {int(code): count for code, count in report["status_codes"].items()}
    return client, statuses, seconds


def in_service(log: Path, offset: int, run: str, label: str) -> list[tuple[str, float]]:
    """(timestamp, ``duration_ms``) of this run's screenings in the service's access log
    after ``offset``, in the order they were logged (as they finished)."""
    wanted = f"bench-{run}-{label}-"
    found: list[tuple[str, float]] = []
    with log.open("rb") as lines:
        lines.seek(offset)
        for raw in lines:
            if wanted.encode() not in raw:
                continue
            record = json.loads(raw)
            if record.get("route") == PATH and str(record.get("request_id", "")).startswith(wanted):
                found.append((str(record["timestamp"]), float(record["duration_ms"])))
    return found


SLOW_MS = 5.0
BURST_GAP_SECONDS = 0.06


def slow_bursts(samples: list[tuple[str, float]], top: int = 3) -> dict[str, Any]:
    """The screenings over :data:`SLOW_MS`, and the largest bursts of them: slow ones
    that finished less than 60 ms apart, as a process held up by one thing would
    leave them (the time of the first, to look up in the other logs)."""
    slow = sorted(
        (datetime.fromisoformat(at.replace("Z", "+00:00")), ms)
        for at, ms in samples
        if ms > SLOW_MS
    )
    bursts: list[list[tuple[datetime, float]]] = []
    for at, ms in slow:
        if bursts and (at - bursts[-1][-1][0]).total_seconds() < BURST_GAP_SECONDS:
            bursts[-1].append((at, ms))
        else:
            bursts.append([(at, ms)])
    largest = sorted(bursts, key=len, reverse=True)[:top]
    return {
        "over_ms": SLOW_MS,
        "slow": len(slow),
        "largest_bursts": [
            {
                "at": burst[0][0].strftime("%H:%M:%S.%f")[:-3],
                "screenings": len(burst),
                "max_ms": max(ms for _, ms in burst),
            }
            for burst in largest
        ],
    }


async def until_ready(http: aiohttp.ClientSession, base: str, seconds: float = 60.0) -> None:
    """Wait for ``/readyz`` (a restarted service reads the rules log first)."""
    deadline = time.monotonic() + seconds
    while True:
        async with http.get(f"{base}/readyz") as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit("the fraud service did not become ready")
        await asyncio.sleep(0.5)


async def gc_pauses(http: aiohttp.ClientSession, base: str) -> dict[str, list[float]]:
    """The service's garbage-collector pauses so far, by generation: [count, seconds]."""
    async with http.get(f"{base}/metrics") as response:
        exposition = await response.text()
    pauses: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "lastro_gc_pause_seconds":
            continue
        for sample in family.samples:
            pair = pauses.setdefault(sample.labels.get("generation", "?"), [0.0, 0.0])
            if sample.name.endswith("_count"):
                pair[0] = sample.value
            elif sample.name.endswith("_sum"):
                pair[1] = sample.value
    return pauses


def pauses_between(
    before: dict[str, list[float]], after: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    """Collections and their total pause (ms) per generation between two readings."""
    between = {}
    for generation, (count, seconds) in sorted(after.items()):
        count_before, seconds_before = before.get(generation, (0.0, 0.0))
        between[generation] = {
            "collections": int(count - count_before),
            "total_ms": round((seconds - seconds_before) * 1000, 1),
        }
    return between


def replica(spec: str) -> tuple[int, Path]:
    """``PID:LOG`` of another process of the service (sharing its port with
    ``LASTRO_REUSE_PORT=1``): its CPU and its access log count too."""
    pid, _, log = spec.partition(":")
    return int(pid), Path(log)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    async with engine_for(settings, "fraud-bench", pool_size=2) as engine:
        return await _bench(args, settings, engine)


async def _bench(
    args: argparse.Namespace, settings: Settings, engine: AsyncEngine
) -> dict[str, Any]:
    service = Service(settings, "fraud")
    pid = service.pid()
    if pid is None or not service.healthy():
        raise SystemExit("the fraud service is not running: start the stack with `lastro dev up`")
    run = secrets.token_hex(3)
    warm = int(args.rate * args.warmup)
    measured = int(args.rate * args.seconds)
    requests, stored = build_requests(args.seed, args.customers, warm + measured, run)
    redis = Redis.from_url(settings.redis_url)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for key, value in stored.items():
                pipe.set(key, value, ex=3600)
            await pipe.execute()
    finally:
        await redis.aclose()
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file), limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        token = await screening_token(settings, http, run)
        base = settings.service_url("fraud")
        await until_ready(http, base)
        if args.driver == "vegeta":
            await load_vegeta(
                settings, base, token, requests[:warm], args.rate, run, "warm", args.connections
            )
        else:
            await load(http, base, token, requests[:warm], args.rate, run, "warm")
        replicas = [(pid, service.log), *(replica(spec) for spec in args.also)]
        offsets = [log.stat().st_size for _, log in replicas]
        costs = RunCosts(settings, engine, also=[p for p, _ in replicas[1:]])
        await costs.start()
        pauses_before = await gc_pauses(http, base)
        load_before, wall = os.getloadavg(), time.perf_counter()
        cpu_before = sum(cpu_seconds(p) for p, _ in replicas)
        profiler = None
        if args.profile:
            spy = shutil.which("py-spy")
            if spy is None:
                raise SystemExit("--profile needs py-spy (pip install py-spy)")
            profiler = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
                "--rate", "250", "--format", "raw", "--nonblocking", "-o", args.profile_out,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        if args.driver == "vegeta":
            client, statuses, seconds = await load_vegeta(
                settings, base, token, requests[warm:], args.rate, run, "run", args.connections
            )
        else:
            client, statuses, seconds = await load(
                http, base, token, requests[warm:], args.rate, run, "run"
            )
        cpu = sum(cpu_seconds(p) for p, _ in replicas) - cpu_before
        wall = time.perf_counter() - wall
        costs.mark()
        load_after = os.getloadavg()
        pauses = pauses_between(pauses_before, await gc_pauses(http, base))
        if profiler is not None:
            await asyncio.wait_for(profiler.wait(), args.seconds + 30)
    await asyncio.sleep(0.5)  # the last access-log lines reach the file
    samples = [
        sample
        for (_, log), offset in zip(replicas, offsets, strict=True)
        for sample in in_service(log, offset, run, "run")
    ]
    service_ms = [ms for _, ms in samples]
    return {
        "rate_target": args.rate,
        "requests": measured,
        "seconds": round(seconds, 2),
        "throughput": round(measured / seconds, 1),
        "statuses": statuses,
        "in_service_ms": percentiles(service_ms),
        "in_service_samples": len(service_ms),
        "slow": slow_bursts(samples),
        "client_ms": client,
        "driver": args.driver,
        "service_cpu_share_of_one_core": round(cpu / wall, 3),
        "processes": len(replicas),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "profile": args.profile_out if args.profile else None,
        # With several processes on the port, /metrics answers from one of them.
        "gc_pauses": pauses,
        "costs": await costs.finish(measured),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--driver",
        choices=("aiohttp", "vegeta"),
        default="aiohttp",
        help="who sends the requests: this script, or vegeta (Go; see above)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the service meanwhile")
    parser.add_argument("--profile-out", default="/tmp/fraud-screening.pyspy")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="PID:LOG",
        help="another fraud process on the same port (LASTRO_REUSE_PORT=1) and its log",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    service, client = report["in_service_ms"], report["client_ms"]
    print(
        f"{report['requests']} screenings at {report['rate_target']:.0f}/s target:"
        f" {report['throughput']}/s achieved, statuses {report['statuses']}"
    )
    print("in service  " + "  ".join(f"{k}={v}ms" for k, v in service.items()))
    print("client      " + "  ".join(f"{k}={v}ms" for k, v in client.items()))
    slow = report["slow"]
    print(
        f"{slow['slow']} over {slow['over_ms']} ms in service; largest bursts (finished"
        " < 60 ms apart): "
        + (
            ", ".join(
                f"{b['screenings']} at {b['at']} UTC (max {b['max_ms']} ms)"
                for b in slow["largest_bursts"]
            )
            or "none"
        )
    )
    print(
        f"fraud ({report['processes']} process(es)) used"
        f" {report['service_cpu_share_of_one_core']:.0%} of one core;"
        f" load average {report['load_average_before']} -> {report['load_average_after']}"
        f" on {report['cpus']} CPUs"
    )
    print(
        "collector pauses in the run: "
        + ", ".join(
            f"generation {generation} {p['collections']}x {p['total_ms']} ms"
            for generation, p in report["gc_pauses"].items()
        )
    )
    print("\n".join(cost_lines(report["costs"], "screening")))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
