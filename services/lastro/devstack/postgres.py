"""PostgreSQL for the local stack: a cluster under ``.dev/postgres`` run as the
``postgres`` user (it refuses root), TLS with the dev CA, one database and a role per
service schema."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
from pathlib import Path

from lastro.core import registry
from lastro.core.config import Settings
from lastro.devstack.base import Component, port_open, run_setup, secret_file
from lastro.devstack.ca import DevCA
from lastro.devstack.processes import read_pid, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_SCHEMAS = registry.schemas()


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
        if not port_open(self.settings.pg_host, self.settings.pg_port):
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
        return run_setup(["runuser", "-u", "postgres", "--", *argv], cwd="/")

    def start(self) -> None:
        s = self.settings
        password = secret_file(s.dev_dir / "secrets" / "pg_password", secrets.token_urlsafe(24))
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
                # Per-statement time for benchmarks (lastro.devstack.statements).
                "shared_preload_libraries = 'pg_stat_statements'\n"
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
        # A stack created before pg_stat_statements was preloaded keeps running without it.
        statistics = (
            "DO $$ BEGIN IF current_setting('shared_preload_libraries') LIKE"
            " '%pg_stat_statements%' THEN CREATE EXTENSION IF NOT EXISTS pg_stat_statements;"
            " END IF; END $$"
        )
        self._psql(f"{schemas}; {statistics}", db=s.pg_database)

    def stop(self) -> bool:
        if self.pid() is None:
            return False
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        return True
