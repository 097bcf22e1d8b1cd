"""The local stack's components, in start order (:func:`components`): PostgreSQL
(``postgres.py``), Redis, Kafka (``broker.py``), the KMS, the SMTP sink and every
service process of the registry; the base class is ``base.py``.

Each component knows how to start itself under ``.dev/<name>``, whether it is
healthy, and how to stop only what it started. ``up`` is idempotent: a healthy
component is left alone, so running it twice is harmless, and data directories
survive ``down`` so ``down`` then ``up`` keeps the data.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import socket
import sys
from pathlib import Path

from lastro.core import registry
from lastro.core.config import Settings
from lastro.devstack.base import Component, https_ok, secret_file
from lastro.devstack.broker import Kafka
from lastro.devstack.ca import DevCA
from lastro.devstack.postgres import Postgres
from lastro.devstack.processes import spawn, wait_until

DEV_AUTH_RATE_LIMIT_PER_MINUTE = 600


class Redis(Component):
    name = "redis"

    @property
    def marker(self) -> str:
        # redis-server rewrites its process title to "redis-server <host>:<port>".
        return f"redis-server {self.settings.host}:{self.settings.redis_port}"

    def address(self) -> str:
        return self.settings.redis_url

    def healthy(self) -> bool:
        try:
            with socket.create_connection((self.settings.host, self.settings.redis_port), 0.5) as c:
                c.sendall(b"PING\r\n")
                return c.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "redis.conf"
        # Persistence is the append-only file alone (fsync every second). A snapshot
        # every minute as well (``save 60 1`` until 2026-12-01) forked Redis and kept a
        # core busy for most of a second each time; on this two-core stack that was the
        # largest stall in the fraud benchmark (137 screenings over 5 ms at once).
        conf.write_text(
            f"bind {self.settings.host}\n"
            f"port {self.settings.redis_port}\n"
            f"dir {self.dir}\n"
            "appendonly yes\n"
            "appendfsync everysec\n"
            'save ""\n'
            "daemonize no\n"
            "protected-mode yes\n"
        )
        proc = spawn(["redis-server", str(conf)], pid_file=self.pid_file, log_file=self.log)
        wait_until(self.healthy, timeout=15, what="Redis", log=self.log, proc=proc)


class KMS(Component):
    name = "kms"

    def address(self) -> str:
        return self.settings.vault_addr

    def healthy(self) -> bool:
        return https_ok(self.settings, f"{self.settings.vault_addr}/v1/sys/health")

    def start(self) -> None:
        s = self.settings
        secrets_dir = s.dev_dir / "secrets"
        token = secrets_dir / "kms_root_token"
        master = secrets_dir / "kms_master_key"
        secret_file(token, "lastro-root-" + secrets.token_urlsafe(24))
        secret_file(master, base64.b64encode(os.urandom(32)).decode())
        issued = DevCA(s.dev_dir / "ca").issue("kms")
        self.dir.mkdir(parents=True, exist_ok=True)
        proc = spawn(
            [
                sys.executable,
                "-m",
                "lastro.devstack.kms",
                "--data-dir",
                str(self.dir),
                "--host",
                s.host,
                "--port",
                str(s.kms_port),
                "--cert",
                str(issued.cert),
                "--key",
                str(issued.key),
                "--token-file",
                str(token),
                "--master-key-file",
                str(master),
            ],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        wait_until(self.healthy, timeout=20, what="KMS", log=self.log, proc=proc)


class SmtpSink(Component):
    """aiosmtpd on the SMTP port, STARTTLS with a dev-CA certificate, every message
    kept in the Maildir ``.dev/mail`` (``lastro.devstack.smtp_sink``)."""

    name = "smtp"

    @property
    def maildir(self) -> Path:
        return self.settings.dev_dir / "mail"

    def address(self) -> str:
        return f"smtp://{self.settings.host}:{self.settings.smtp_port} (mail in {self.maildir})"

    def healthy(self) -> bool:
        try:
            with socket.create_connection((self.settings.host, self.settings.smtp_port), 1) as c:
                c.settimeout(1)
                return c.recv(64).startswith(b"220")
        except OSError:
            return False

    def start(self) -> None:
        s = self.settings
        issued = DevCA(s.dev_dir / "ca").issue("smtp")
        proc = spawn(
            [
                sys.executable,
                "-m",
                "lastro.devstack.smtp_sink",
                "--maildir",
                str(self.maildir),
                "--host",
                s.host,
                "--port",
                str(s.smtp_port),
                "--cert",
                str(issued.cert),
                "--key",
                str(issued.key),
            ],
            pid_file=self.pid_file,
            log_file=self.log,
        )
        wait_until(self.healthy, timeout=20, what="SMTP sink", log=self.log, proc=proc)


class Service(Component):
    """One Lastro process, run as `lastro serve <name>` over HTTPS (a worker serves
    only its operational routes: health, readiness, metrics)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        super().__init__(settings)

    @property
    def marker(self) -> str:
        return f"lastro.cli serve {self.name}"

    def address(self) -> str:
        return self.settings.service_url(self.name)

    def healthy(self) -> bool:
        return https_ok(self.settings, f"{self.address()}/healthz")

    def start(self) -> None:
        _partner_secrets(self.settings)
        proc = spawn(
            [sys.executable, "-m", "lastro.cli", "serve", self.name],
            pid_file=self.pid_file,
            log_file=self.log,
            env={
                "LASTRO_DEV_DIR": str(self.settings.dev_dir),
                # spans as JSON lines, one file per process (`lastro trace show`)
                "LASTRO_TRACES_DIR": str(traces_dir(self.settings)),
                # Every process of the stack and every test client share one address
                # (127.0.0.1), so the per-IP limit on sign-in and token routes (30 a
                # minute in a deployment, where each pod and each person has its own)
                # would count the services' token requests with the people's.
                "LASTRO_AUTH_RATE_LIMIT_PER_MINUTE": str(DEV_AUTH_RATE_LIMIT_PER_MINUTE),
            },
        )
        wait_until(
            self.healthy,
            timeout=60,
            what=self.name,
            log=self.log,
            proc=proc,
        )


def traces_dir(settings: Settings) -> Path:
    """Where the stack's processes write their spans: ``LASTRO_TRACES_DIR``, else
    ``.dev/traces``."""
    return settings.traces_dir or settings.dev_dir / "traces"


def _partner_secrets(settings: Settings) -> None:
    """The simulated third parties' API keys and the acquirer's webhook secret, made
    once: the fakes and the services calling them read the same files (core.config)."""
    secrets_dir = settings.dev_dir / "secrets"
    for spec in registry.SERVICES:
        if spec.kind == "external":
            key = f"{spec.name}_test_{secrets.token_urlsafe(24)}"
            secret_file(secrets_dir / f"{spec.name}_api_key", key)
    secret_file(secrets_dir / "acquirer_webhook_secret", "whsec_" + secrets.token_urlsafe(32))


def available_services() -> list[str]:
    """The processes the local stack runs (every registered API service, worker and
    simulated third party whose module is present), in start order."""
    return [
        spec.name
        for spec in registry.SERVICES
        if spec.kind != "operator" and _module_present(spec.module)
    ]


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is absent
        return False


def components(
    settings: Settings, *, services: bool = True, kubernetes: bool = False
) -> list[Component]:
    """The stack in start order (stop runs in reverse): the infrastructure, then (unless
    ``services`` is false) every process and the Prometheus scraping them; ``kubernetes``
    adds etcd and kube-apiserver (`lastro dev up --k8s`)."""
    from lastro.devstack.kubernetes import kubernetes_components

    infrastructure: list[Component] = [
        Postgres(settings),
        Redis(settings),
        Kafka(settings),
        KMS(settings),
        SmtpSink(settings),
    ]
    extra = kubernetes_components(settings) if kubernetes else []
    if not services:
        return infrastructure + extra
    from lastro.devstack.prometheus import Prometheus

    running = available_services()
    processes: list[Component] = [Service(settings, name) for name in running]
    return infrastructure + processes + [Prometheus(settings, running)] + extra
