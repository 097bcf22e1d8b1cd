"""The local stack's components: PostgreSQL, Redis, Kafka (KRaft), the KMS and the
SMTP sink.

Each component knows how to start itself under ``.dev/<name>``, whether it is
healthy, and how to stop only what it started. ``up`` is idempotent: a healthy
component is left alone, so running it twice is harmless, and data directories
survive ``down`` so ``down`` then ``up`` keeps the data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lastro.core import registry
from lastro.core.config import Settings
from lastro.core.events import TOPIC_CONFIGS, TOPICS
from lastro.devstack.ca import DevCA
from lastro.devstack.processes import StartError, read_pid, spawn, stop_pid, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_SCHEMAS = registry.schemas()
KAFKA_POM = Path(__file__).parent / "kafka" / "pom.xml"


@dataclass(frozen=True)
class Status:
    name: str
    healthy: bool
    address: str
    pid: int | None
    detail: str = ""


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a setup command; a failure raises StartError with the command's own output."""
    result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]  # noqa: S603
        argv, check=False, text=True, capture_output=True, **kwargs
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise StartError(f"`{' '.join(argv[:4])} ...` exited {result.returncode}:\n{output}")
    return result


def kafka_cluster_id(make: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: a base64url UUID that does not start with '-' (the storage
    tool would read such an id as an option, as Kafka's own Uuid.randomUuid avoids)."""
    while True:
        candidate = base64.urlsafe_b64encode(make()).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def _secret_file(path: Path, make: str) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make)
    return path.read_text().strip()


class Component:
    name: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.dev_dir / self.name
        self.log = settings.dev_dir / "logs" / f"{self.name}.log"
        self.pid_file = settings.dev_dir / "run" / f"{self.name}.pid"

    @property
    def marker(self) -> str:
        return str(self.settings.dev_dir)

    def healthy(self) -> bool:
        raise NotImplementedError

    def address(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> bool:
        return stop_pid(self.pid_file, self.marker)

    def pid(self) -> int | None:
        return read_pid(self.pid_file, self.marker)

    def status(self) -> Status:
        return Status(self.name, self.healthy(), self.address(), self.pid())

    def up(self) -> str:
        if self.healthy():
            return "already running"
        self.start()
        return "started"


def _postgres_can_reach(path: Path) -> bool:
    probe = subprocess.run(  # noqa: S603
        ["runuser", "-u", "postgres", "--", "test", "-x", str(path)],  # noqa: S607
        check=False,
        capture_output=True,
    )
    return probe.returncode == 0


class Postgres(Component):
    """PostgreSQL runs as the ``postgres`` user, which must reach its data directory.

    Where the checkout sits below a directory that user cannot traverse (a clone
    under ``/root``, say), the cluster lives in ``/var/lib/lastro-dev/postgres-<hash>``
    instead and ``.dev/postgres`` is a symlink to it.
    """

    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.dir = self.dir.resolve() if self.dir.is_symlink() else self.dir
        self.log = self.dir / "postgres.log"

    def _place(self) -> None:
        link = self.settings.dev_dir / "postgres"
        if link.exists() or _postgres_can_reach(self.settings.dev_dir):
            return
        digest = hashlib.sha256(str(self.settings.dev_dir).encode()).hexdigest()[:12]
        # A root-owned parent, not a world-writable temp dir: nobody can pre-create it.
        parent = Path("/var/lib/lastro-dev")
        parent.mkdir(mode=0o755, exist_ok=True)
        home = parent / f"postgres-{digest}"
        self.dir, self.log = home, home / "postgres.log"
        if home.exists():
            # Left by an earlier .dev at the same path (a deleted checkout, an earlier CI
            # clone): its password and data belong to a stack that no longer exists.
            self.stop()
            shutil.rmtree(home)
        home.mkdir(mode=0o700)
        link.symlink_to(home, target_is_directory=True)

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def address(self) -> str:
        s = self.settings
        return (
            f"postgresql://{s.pg_user}@{s.pg_host}:{s.pg_port}/{s.pg_database}?sslmode=verify-full"
        )

    def healthy(self) -> bool:
        if not _port_open(self.settings.pg_host, self.settings.pg_port):
            return False
        result = subprocess.run(  # noqa: S603
            [
                str(PG_BIN / "pg_isready"),
                "-q",
                "-h",
                self.settings.pg_host,
                "-p",
                str(self.settings.pg_port),
            ],
            check=False,
        )
        return result.returncode == 0

    def pid(self) -> int | None:
        return read_pid(self.data / "postmaster.pid", str(self.data))

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return _run(["runuser", "-u", "postgres", "--", *argv], cwd="/")

    def start(self) -> None:
        s = self.settings
        password = _secret_file(s.dev_dir / "secrets" / "pg_password", secrets.token_urlsafe(24))
        self._place()
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._initdb(password)
        self._install_tls()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        shutil.chown(self.log, "postgres")
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
        )
        wait_until(self.healthy, timeout=30, what="PostgreSQL", log=self.log)
        self._ensure_database(password)

    def _initdb(self, password: str) -> None:
        s = self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        run_dir = self.dir / "run"
        run_dir.mkdir(exist_ok=True)
        pwfile = self.dir / "initdb-pw"
        pwfile.write_text(password)
        for path in (self.dir, run_dir, pwfile):
            shutil.chown(path, "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        pwfile.unlink()
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# lastro dev stack\n"
                f"listen_addresses = '{s.pg_host}'\n"
                f"port = {s.pg_port}\n"
                f"unix_socket_directories = '{run_dir}'\n"
                "ssl = on\n"
                "ssl_cert_file = 'server.crt'\n"
                "ssl_key_file = 'server.key'\n"
                "ssl_min_protocol_version = 'TLSv1.2'\n"
                "max_connections = 300\n"
                "shared_buffers = 256MB\n"
                "log_min_messages = warning\n"
            )
        # Only TLS connections from loopback, with passwords.
        (self.data / "pg_hba.conf").write_text(
            "local all postgres peer\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostssl all all ::1/128 scram-sha-256\n"
        )
        shutil.chown(self.data / "pg_hba.conf", "postgres")

    def _install_tls(self) -> None:
        issued = DevCA(self.settings.dev_dir / "ca").issue("postgres")
        for src, dst in ((issued.cert, "server.crt"), (issued.key, "server.key")):
            target = self.data / dst
            shutil.copyfile(src, target)
            target.chmod(0o600)
            shutil.chown(target, "postgres")

    def _psql(self, sql: str, db: str = "postgres") -> str:
        run_dir = self.dir / "run"
        return self._as_postgres(
            str(PG_BIN / "psql"),
            "-h",
            str(run_dir),
            "-p",
            str(self.settings.pg_port),
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ).stdout.strip()

    def _ensure_database(self, password: str) -> None:
        # Role and database names are validated SQL identifiers (core.config); the
        # password is token_urlsafe output, so it never contains a quote.
        s = self.settings
        if not self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{s.pg_user}'"):  # noqa: S608
            self._psql(f"CREATE ROLE {s.pg_user} LOGIN PASSWORD '{password}'")
        if not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{s.pg_database}'"):  # noqa: S608
            self._psql(f"CREATE DATABASE {s.pg_database} OWNER {s.pg_user}")
        schemas = "; ".join(
            f"CREATE SCHEMA IF NOT EXISTS {name} AUTHORIZATION {s.pg_user}"
            for name in SERVICE_SCHEMAS
        )
        self._psql(schemas, db=s.pg_database)

    def stop(self) -> bool:
        if self.pid() is None:
            return False
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        return True


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
        conf.write_text(
            f"bind {self.settings.host}\n"
            f"port {self.settings.redis_port}\n"
            f"dir {self.dir}\n"
            "appendonly yes\n"
            "daemonize no\n"
            "protected-mode yes\n"
            "save 60 1\n"
        )
        proc = spawn(["redis-server", str(conf)], pid_file=self.pid_file, log_file=self.log)
        wait_until(self.healthy, timeout=15, what="Redis", log=self.log, proc=proc)


class Kafka(Component):
    name = "kafka"

    @property
    def libs(self) -> Path:
        return self.dir / "libs"

    def address(self) -> str:
        return self.settings.kafka_bootstrap

    def healthy(self) -> bool:
        if not _port_open(self.settings.host, self.settings.kafka_port):
            return False
        return asyncio.run(self._topics_ready())

    async def _topics_ready(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=3000
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            return set(TOPICS) <= existing
        except Exception:
            return False
        finally:
            await admin.close()

    def up(self) -> str:
        """Start the broker, or, when ours already runs but a topic added to
        ``core.events.TOPICS`` since is missing, create the missing topics."""
        if self.healthy():
            return "already running"
        if self.pid() is not None and _port_open(self.settings.host, self.settings.kafka_port):
            asyncio.run(self._create_topics())
            wait_until(self.healthy, timeout=30, what="Kafka topics", log=self.log)
            return "topics created"
        self.start()
        return "started"

    def resolve_jars(self) -> str:
        """Copy the broker jars from Maven Central (via ~/.m2) once; later starts are offline."""
        if (self.libs / ".complete").exists():
            return "cached"
        self.libs.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
            ]
        )
        (self.libs / ".complete").write_text("ok\n")
        return "resolved from Maven Central"

    def _write_config(self) -> Path:
        s = self.settings
        conf = self.dir / "server.properties"
        conf.write_text(
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.voters=1@{s.host}:{s.kafka_controller_port}\n"
            f"listeners=PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}\n"
            f"advertised.listeners=PLAINTEXT://{s.host}:{s.kafka_port}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            f"log.dirs={self.dir / 'data'}\n"
            "num.partitions=3\n"
            "auto.create.topics.enable=false\n"
            "offsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=10\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            "log.retention.hours=168\n"
        )
        (self.dir / "log4j2.properties").write_text(
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.stdout.ref = STDOUT\n"
            "appender.stdout.type = Console\n"
            "appender.stdout.name = STDOUT\n"
            "appender.stdout.layout.type = PatternLayout\n"
            "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
        )
        return conf

    def _java(self, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dlastro.dev={self.settings.dev_dir}",
            "-cp",
            f"{self.libs}/*",
            *args,
        ]

    def start(self) -> None:
        if self.pid() is not None and _port_open(self.settings.host, self.settings.kafka_port):
            # Our broker runs but lacks a topic added to TOPICS since it was started.
            asyncio.run(self._create_topics())
            wait_until(self.healthy, timeout=30, what="Kafka topics", log=self.log)
            return
        self.resolve_jars()
        conf = self._write_config()
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = kafka_cluster_id()
            _run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(conf)))
        proc = spawn(
            self._java("kafka.Kafka", str(conf)), pid_file=self.pid_file, log_file=self.log
        )
        wait_until(
            lambda: _port_open(self.settings.host, self.settings.kafka_port),
            timeout=60,
            what="Kafka",
            log=self.log,
            proc=proc,
        )
        asyncio.run(self._create_topics())
        wait_until(self.healthy, timeout=30, what="Kafka topics", log=self.log)

    async def _create_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        for _ in range(40):
            try:
                await admin.start()
                break
            except Exception:
                await asyncio.sleep(0.5)
        try:
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=TOPIC_CONFIGS.get(name, {}),
                )
                for name, partitions in TOPICS.items()
                if name not in existing
            ]
            if missing:
                await admin.create_topics(missing)
        finally:
            await admin.close()


class KMS(Component):
    name = "kms"

    def address(self) -> str:
        return self.settings.vault_addr

    def healthy(self) -> bool:
        return _https_ok(self.settings, f"{self.settings.vault_addr}/v1/sys/health")

    def start(self) -> None:
        s = self.settings
        secrets_dir = s.dev_dir / "secrets"
        token = secrets_dir / "kms_root_token"
        master = secrets_dir / "kms_master_key"
        _secret_file(token, "lastro-root-" + secrets.token_urlsafe(24))
        _secret_file(master, base64.b64encode(os.urandom(32)).decode())
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


def _https_ok(settings: Settings, url: str) -> bool:
    if not settings.ca_file.exists():
        return False
    ctx = ssl.create_default_context(cafile=str(settings.ca_file))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False


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
        return _https_ok(self.settings, f"{self.address()}/healthz")

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
            _secret_file(secrets_dir / f"{spec.name}_api_key", key)
    _secret_file(secrets_dir / "acquirer_webhook_secret", "whsec_" + secrets.token_urlsafe(32))


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
