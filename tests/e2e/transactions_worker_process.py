"""The transaction worker as a process, able to die at an exact step (chaos tests).

    python tests/e2e/transactions_worker_process.py --crash-at changed:approved

runs the real worker application (``lastro.transactions.worker.create_app``) and,
when ``--crash-at`` is given, SIGKILLs itself the ``--crash-after``-th time the
processor reports that stage: ``changed:<status>`` right after a change to that
status was committed (and before the next effect), ``effect:<Effect>`` right after
an effect answered (before its outcome was stored) — the two windows a crash can
fall in. No cleanup runs: no offset commit, no graceful leave, as in a real crash.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services"))

from lastro.core import registry
from lastro.core.config import load_settings
from lastro.core.http import serve
from lastro.core.observability import configure_logging
from lastro.devstack.ca import DevCA
from lastro.transactions.domain.model import Transaction, TransferBatch
from lastro.transactions.worker import PROCESSOR_KEY, create_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-at", default="")
    parser.add_argument("--crash-after", type=int, default=1)
    args = parser.parse_args()
    settings = load_settings()
    configure_logging("transactions-worker", settings.log_level)
    cert = DevCA(settings.dev_dir / "ca").issue("transactions-worker")
    seen = [0]

    def crash_when(stage: str, subject: Transaction | TransferBatch) -> None:
        changed = stage == "changed" and isinstance(subject, Transaction)
        name = f"changed:{subject.status.value}" if changed else stage
        if name == args.crash_at:
            seen[0] += 1
            if seen[0] >= args.crash_after:
                print(f"crashing at {name} of {subject.id}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    async def run() -> None:
        app = await create_app(settings)

        async def arm(app: object) -> None:
            if args.crash_at:
                app[PROCESSOR_KEY].observers.append(crash_when)  # type: ignore[index]

        app.on_startup.append(arm)
        port = settings.service_ports[registry.service("transactions-worker").name]
        await serve(app, settings, cert.cert, cert.key, port)

    asyncio.run(run())


if __name__ == "__main__":
    main()
