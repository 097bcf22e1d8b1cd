"""`lastro dev mail`: the e-mail the dev stack's SMTP sink received (newest last):
when, to whom, the TLS version the sender used, the subject and the plain text. The
sink is the dev stack's ``smtp`` component (``lastro.devstack.smtp_sink``)."""

from __future__ import annotations

from lastro.core.config import Settings
from lastro.devstack.smtp_sink import StoredMail, purge_mail, read_mail


def received_mail(
    settings: Settings, *, to: str | None = None, limit: int = 20
) -> list[StoredMail]:
    """The newest ``limit`` messages in the sink's Maildir (only those to ``to``)."""
    return read_mail(settings.dev_dir / "mail", to=to)[-limit:]


def purge(settings: Settings, *, to: str | None = None) -> int:
    """Delete the sink's messages (only those to ``to``); how many went."""
    return purge_mail(settings.dev_dir / "mail", to=to)


def render(messages: list[StoredMail]) -> str:
    if not messages:
        return "no mail"
    blocks = []
    for mail in messages:
        blocks.append(
            "\n".join(
                [
                    f"--- {mail.message.get('Date')}  to {', '.join(mail.rcpt_to)}  ({mail.tls})",
                    f"Subject: {mail.subject}",
                    f"Message-ID: {mail.message_id}",
                    (mail.part("text/plain") or "").rstrip(),
                ]
            )
        )
    return "\n".join(blocks)
