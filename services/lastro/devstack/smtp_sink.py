"""The dev stack's SMTP sink: accepts every message, delivers none, keeps them all.

``python -m lastro.devstack.smtp_sink --maildir DIR --host H --port P --cert C --key K``
runs aiosmtpd on ``H:P``. It offers STARTTLS with a dev-CA certificate and refuses
mail before it (``530``), so a client's TLS path is exercised on every message.
Messages are stored in a Maildir (``.dev/mail``), one file each, with the envelope
recorded in ``X-MailFrom``/``X-RcptTo`` and the TLS version the session used in
``X-Lastro-TLS``; tests and ``lastro dev mail`` read them with :func:`read_mail`.
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import signal
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

from lastro.core.security.tls import server_context


class TlsRecordingMailbox(Mailbox):
    """aiosmtpd's Maildir handler, noting the session's TLS version in each message."""

    def prepare_message(self, session: Any, envelope: Any) -> Message:
        message: Message = super().prepare_message(session, envelope)
        extra = session.ssl or {}  # the TLS transport's extra info once STARTTLS ran
        tls = extra.get("ssl_object")
        message["X-Lastro-TLS"] = (tls.version() if tls is not None else None) or "none"
        return message


@dataclass(frozen=True)
class StoredMail:
    """One message the sink kept (``message`` parsed with the modern e-mail policy)."""

    key: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    tls: str
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def message_id(self) -> str:
        return str(self.message.get("Message-ID", ""))

    def part(self, content_type: str) -> str | None:
        """The decoded body part of ``content_type`` (``text/plain``, ``text/html``)."""
        for part in self.message.walk():
            if part.get_content_type() == content_type and not part.is_multipart():
                return str(part.get_content())
        return None


def read_mail(maildir: Path, *, to: str | None = None) -> list[StoredMail]:
    """Every message in the sink's Maildir (optionally only those to ``to``), oldest first."""
    if not (maildir / "cur").exists() and not (maildir / "new").exists():
        return []
    box = mailbox.Maildir(str(maildir), factory=None, create=False)
    wanted = None if to is None else to.lower().encode()
    found = []
    for key in sorted(box.keys(), key=_arrival):
        raw = box.get_bytes(key)
        if wanted is not None and wanted not in raw.lower():
            # Not to ``to`` (its address is in X-RcptTo): skip the parse, which is what
            # made a poll of a sink holding a benchmark's 17,000 messages take seconds.
            continue
        parsed = message_from_bytes(raw, policy=default)
        rcpt = tuple(a.strip() for a in str(parsed.get("X-RcptTo", "")).split(",") if a.strip())
        if to is not None and to.lower() not in (r.lower() for r in rcpt):
            continue
        found.append(
            StoredMail(
                key,
                str(parsed.get("X-MailFrom", "")),
                rcpt,
                str(parsed.get("X-Lastro-TLS", "none")),
                parsed,
            )
        )
    return found


def purge_mail(maildir: Path, *, to: str | None = None) -> int:
    """Delete every message in the sink's Maildir (only those to ``to``); how many."""
    if not (maildir / "cur").exists() and not (maildir / "new").exists():
        return 0
    box = mailbox.Maildir(str(maildir), factory=None, create=False)
    doomed = list(box.keys()) if to is None else [m.key for m in read_mail(maildir, to=to)]
    for key in doomed:
        box.discard(key)
    return len(doomed)


def _arrival(key: str) -> tuple[int, int, str]:
    """Maildir names start ``<seconds>.M<microseconds>P<pid>…``: arrival order."""
    seconds, _, rest = key.partition(".")
    micros = rest[1:].partition("P")[0] if rest.startswith("M") else "0"
    return (int(seconds) if seconds.isdigit() else 0, int(micros) if micros.isdigit() else 0, key)


async def serve(maildir: Path, host: str, port: int, cert: Path, key: Path) -> None:
    controller = Controller(
        TlsRecordingMailbox(maildir),
        hostname=host,
        port=port,
        tls_context=server_context(cert, key),
        require_starttls=True,
        ready_timeout=10,
    )
    controller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    for folder in ("tmp", "new", "cur"):  # a Maildir; created in full even if the dir exists
        (args.maildir / folder).mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.maildir, args.host, args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
