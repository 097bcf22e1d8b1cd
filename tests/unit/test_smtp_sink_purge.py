"""`lastro dev mail --purge`: the sink's Maildir emptied, or only one address's mail."""

from __future__ import annotations

import mailbox
from pathlib import Path

from lastro.devstack.smtp_sink import purge_mail, read_mail


def _deliver(maildir: Path, to: str, subject: str) -> None:
    box = mailbox.Maildir(str(maildir), create=True)
    box.add(
        f"X-MailFrom: noreply@lastro.dev\r\nX-RcptTo: {to}\r\nX-Lastro-TLS: TLSv1.3\r\n"
        f"Subject: {subject}\r\n\r\nbody\r\n".encode()
    )


def test_purge_to_one_address_keeps_everyone_elses_mail(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    _deliver(maildir, "ana@example.com", "one")
    _deliver(maildir, "bruno@example.com", "two")
    _deliver(maildir, "Ana@Example.com", "three")

    assert purge_mail(maildir, to="ana@example.com") == 2
    assert [m.subject for m in read_mail(maildir)] == ["two"]


def test_purge_empties_the_sink_and_an_empty_or_missing_one_is_fine(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    assert purge_mail(maildir) == 0  # the sink never received anything
    for n in range(5):
        _deliver(maildir, f"user{n}@example.com", f"message {n}")

    assert purge_mail(maildir) == 5
    assert read_mail(maildir) == []
    assert purge_mail(maildir) == 0
