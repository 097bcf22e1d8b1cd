"""E-mail over kept SMTP connections, against a real SMTP server (aiosmtpd, in a
thread of this process): messages share one connection, and a connection the server
closed meanwhile is replaced without losing the message."""

from __future__ import annotations

import email
import socket
import ssl
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from lastro.notifications.channels import EmailSender
from lastro.notifications.domain.delivery import Outcome
from lastro.notifications.domain.templates import Email

MAIL = Email(
    subject="Transferência recebida: R$ 1.234,56",
    text="Olá!\nVocê recebeu R$ 1.234,56.\n",
    html="<p>Olá! Você recebeu <b>R$ 1.234,56</b>.</p>",
)


class Inbox:
    """aiosmtpd handler keeping every message it accepted, with its peer's port;
    ``hang_up_next`` makes it drop the connection at the next MAIL command, as a
    server closing an idle client does (the client only learns it when it speaks)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, Message]] = []
        self.hang_up_next = False

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.hang_up_next:
            self.hang_up_next = False
            server.transport.close()
            return "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((session.peer[1], email.message_from_bytes(envelope.content)))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int, list[Controller]]]:
    inbox, port = Inbox(), _free_port()
    running = [Controller(inbox, hostname="127.0.0.1", port=port)]
    running[0].start()
    yield inbox, port, running
    if running[0].server is not None:  # still serving
        running[0].stop()


def _sender(port: int) -> EmailSender:
    return EmailSender(
        "127.0.0.1", port, ssl.create_default_context(), "Lastro <no-reply@lastro.dev>", 5.0
    )


async def test_messages_share_one_connection(smtp: tuple[Inbox, int, list[Controller]]) -> None:
    inbox, port, _ = smtp
    sender = _sender(port)
    try:
        for n in range(3):
            sent = await sender.send(f"dlv_{n}", f"customer{n}@example.com", MAIL)
            assert sent.result.outcome is Outcome.DELIVERED, sent.result
    finally:
        await sender.close()
    assert sender.connections_opened == 1
    assert [m["Message-ID"] for _, m in inbox.messages] == [
        "<dlv_0@lastro.dev>",
        "<dlv_1@lastro.dev>",
        "<dlv_2@lastro.dev>",
    ]
    assert len({peer for peer, _ in inbox.messages}) == 1  # one client port: one connection
    message = inbox.messages[0][1]
    assert message.get_content_type() == "multipart/alternative"
    assert str(email.header.make_header(email.header.decode_header(message["Subject"]))) == (
        MAIL.subject
    )
    text, html = message.get_payload()
    assert text.get_content_type() == "text/plain"
    assert text.get_payload(decode=True).decode() == MAIL.text
    assert html.get_content_type() == "text/html"
    assert html.get_payload(decode=True).decode() == MAIL.html


async def test_a_connection_the_server_closed_is_replaced_and_the_message_sent_once(
    smtp: tuple[Inbox, int, list[Controller]],
) -> None:
    inbox, port, _ = smtp
    sender = _sender(port)
    try:
        first = await sender.send("dlv_first", "customer@example.com", MAIL)
        inbox.hang_up_next = True
        second = await sender.send("dlv_second", "customer@example.com", MAIL)
        third = await sender.send("dlv_third", "customer@example.com", MAIL)
    finally:
        await sender.close()
    assert [s.result.outcome for s in (first, second, third)] == [Outcome.DELIVERED] * 3
    assert sender.connections_opened == 2  # the dropped one, then its replacement
    assert [m["Message-ID"] for _, m in inbox.messages] == [
        "<dlv_first@lastro.dev>",
        "<dlv_second@lastro.dev>",
        "<dlv_third@lastro.dev>",
    ]
    assert inbox.messages[0][0] != inbox.messages[1][0] == inbox.messages[2][0]


async def test_a_server_gone_for_good_is_reported_unreachable(
    smtp: tuple[Inbox, int, list[Controller]],
) -> None:
    inbox, port, running = smtp
    sender = _sender(port)
    try:
        await sender.send("dlv_first", "customer@example.com", MAIL)
        running[0].stop()
        gone = await sender.send("dlv_gone", "customer@example.com", MAIL)
    finally:
        await sender.close()
    assert gone.result.outcome is Outcome.UNREACHABLE, gone.result
    assert [m["Message-ID"] for _, m in inbox.messages] == ["<dlv_first@lastro.dev>"]


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(
    smtp: tuple[Inbox, int, list[Controller]],
) -> None:
    inbox, port, _ = smtp
    sender = _sender(port)
    forged = Email(subject="Hi\r\nBcc: victim@example.com", text="x", html="<p>x</p>")
    with pytest.raises(ValueError, match="line breaks"):
        await sender.send("dlv_forged", "customer@example.com", forged)
    await sender.close()
    assert inbox.messages == []
