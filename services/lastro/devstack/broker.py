"""Kafka for the local stack: one KRaft broker from the Maven Central jars
(``kafka/pom.xml``) on the machine's JDK, with an explicit heap, and the platform's
topics created with their configs."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from lastro.core.events import TOPIC_CONFIGS, TOPICS
from lastro.devstack.base import Component, port_open, run_setup
from lastro.devstack.processes import spawn, wait_until

log = logging.getLogger(__name__)

KAFKA_POM = Path(__file__).parent / "kafka" / "pom.xml"


def kafka_cluster_id(make: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: a base64url UUID that does not start with '-' (the storage
    tool would read such an id as an option, as Kafka's own Uuid.randomUuid avoids)."""
    while True:
        candidate = base64.urlsafe_b64encode(make()).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


class Kafka(Component):
    name = "kafka"

    @property
    def libs(self) -> Path:
        return self.dir / "libs"

    def address(self) -> str:
        return self.settings.kafka_bootstrap

    def healthy(self) -> bool:
        if not port_open(self.settings.host, self.settings.kafka_port):
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
        if self.pid() is not None and port_open(self.settings.host, self.settings.kafka_port):
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
        run_setup(
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
        if self.pid() is not None and port_open(self.settings.host, self.settings.kafka_port):
            # Our broker runs but lacks a topic added to TOPICS since it was started.
            asyncio.run(self._create_topics())
            wait_until(self.healthy, timeout=30, what="Kafka topics", log=self.log)
            return
        self.resolve_jars()
        conf = self._write_config()
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = kafka_cluster_id()
            run_setup(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(conf))
            )
        proc = spawn(
            self._java("kafka.Kafka", str(conf)), pid_file=self.pid_file, log_file=self.log
        )
        wait_until(
            lambda: port_open(self.settings.host, self.settings.kafka_port),
            timeout=60,
            what="Kafka",
            log=self.log,
            proc=proc,
        )
        asyncio.run(self._create_topics())
        wait_until(self.healthy, timeout=30, what="Kafka topics", log=self.log)

    async def _create_topics(self) -> None:
        """Create the topics of ``TOPICS`` that are missing. A broker restarted on its
        data opens its port before it serves metadata (the admin client then sees no
        broker: NodeNotReadyError), so the whole exchange is retried for up to 30 s."""
        from aiokafka.errors import KafkaError

        deadline = time.monotonic() + 30
        while True:
            try:
                await self._create_missing_topics()
                return
            except (KafkaError, OSError) as error:
                if time.monotonic() > deadline:
                    raise
                log.info("Kafka not ready for topics yet (%s); retrying", error)
                await asyncio.sleep(0.5)

    async def _create_missing_topics(self) -> None:
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
