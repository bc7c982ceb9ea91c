"""SMTP PIPELINING (RFC 2920): with a server that advertises it, MAIL, RCPT and DATA go out in one
write and their three replies are read together. A bare scripted server (asyncio streams on
127.0.0.1) shows what aiosmtpd cannot: replies held back until all three commands are in (a
client that waits for each reply would hang), replies trickling in one write each, a refusal
answered with 354 anyway, a 421 and a hang-up, and a server that never answers. The fault tests
(test_deliver_faults) run once more against aiosmtpd advertising PIPELINING."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from newsletter.deliver import SmtpTransport
from newsletter.errors import DeliveryError
from newsletter.models import RenderedEmail
from newsletter.settings import Settings

RAW = b"Subject: hi\r\nMessage-ID: <p@example.org>\r\n\r\n.a dot\r\nbody\r\n"


def message(to: str = "bob@example.org") -> RenderedEmail:
    return RenderedEmail(to, "hi", "<p@example.org>", "", "", RAW)


@dataclass
class Scripted:
    """Replies by command; `together`: the envelope's three replies in one write, only once
    DATA has been read; else each as soon as its command is read, a moment apart."""

    replies: dict[bytes, list[bytes]] = field(default_factory=dict)
    together: bool = False
    hang_up_after: bytes = b""  # hang up right after replying to this command, once
    silent: bool = False  # read commands, never answer them
    delays: dict[bytes, list[float]] = field(default_factory=dict)  # before a reply, once each
    first_only: bool = False  # `replies` and `delays` script the first connection only
    lines: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0

    def reply(self, command: bytes, connection: int = 1) -> bytes:
        queue = self.replies.get(command) if connection == 1 or not self.first_only else None
        if queue:
            return queue.pop(0)
        return {b"DATA": b"354 go ahead", b"QUIT": b"221 bye"}.get(command, b"250 ok")

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        writer.write(b"220 scripted ESMTP\r\n")
        held: list[bytes] = []
        try:
            while line := await reader.readline():
                self.lines.append(line.rstrip())
                command = line[:4].upper()
                if command == b"EHLO":
                    writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
                    continue
                if self.silent:
                    continue
                answer = self.reply(command, number)
                if (number == 1 or not self.first_only) and self.delays.get(command):
                    await asyncio.sleep(self.delays[command].pop(0))
                if self.together and command in (b"MAIL", b"RCPT"):
                    held.append(answer)
                    continue
                writer.write(b"".join(f + b"\r\n" for f in [*held, answer]))
                held = []
                await writer.drain()
                if command == self.hang_up_after:
                    self.hang_up_after = b""
                    return
                if command == b"DATA" and answer.startswith(b"354"):
                    body = [await reader.readline()]
                    while body[-1] not in (b".\r\n", b""):
                        body.append(await reader.readline())
                    self.bodies.append(b"".join(body))
                    writer.write(b"250 queued\r\n")
                elif command == b"QUIT":
                    return
                else:
                    await asyncio.sleep(0.01)  # the next reply comes in a packet of its own
        finally:
            writer.close()


@asynccontextmanager
async def scripted(server: Scripted) -> AsyncIterator[int]:
    listening = await asyncio.start_server(server.session, "127.0.0.1", 0)
    try:
        yield int(listening.sockets[0].getsockname()[1])
    finally:
        listening.close()
        await listening.wait_closed()


@pytest.fixture
def smtp_settings(make_settings: Callable[..., Settings]) -> Callable[[int], Settings]:
    def make(port: int) -> Settings:
        return make_settings(
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_security="none",
            smtp_helo_name="client.test",
            smtp_timeout=1.0,
            smtp_pool_size=1,
        )

    return make


def envelopes(server: Scripted) -> list[bytes]:
    return [line.split(b":")[0] for line in server.lines if line[:4] in (b"MAIL", b"RCPT")]


@pytest.mark.parametrize("together", [True, False], ids=["held-back", "one-by-one"])
async def test_the_envelope_goes_out_at_once_and_every_reply_is_read(
    together: bool, smtp_settings: Callable[[int], Settings]
) -> None:
    server = Scripted(together=together)
    async with scripted(server) as port:
        transport = SmtpTransport(smtp_settings(port))
        await transport.start()
        replies = [
            await transport.send(message(f"r{i}@example.org"), "me@example.org") for i in (1, 2)
        ]
        await transport.close()
    assert replies == ["250 queued", "250 queued"]
    assert server.bodies == [RAW.replace(b"\r\n.a", b"\r\n..a") + b".\r\n"] * 2
    assert server.connections == 1
    assert [line for line in server.lines if line.startswith(b"RCPT")] == [
        b"RCPT TO:<r1@example.org>",
        b"RCPT TO:<r2@example.org>",
    ]


async def test_a_refused_recipient_is_that_subscriber_s_and_the_connection_goes_on(
    smtp_settings: Callable[[int], Settings],
) -> None:
    server = Scripted(replies={b"RCPT": [b"550 5.1.1 no such user"], b"DATA": [b"554 no rcpt"]})
    async with scripted(server) as port:
        transport = SmtpTransport(smtp_settings(port))
        await transport.start()
        with pytest.raises(DeliveryError) as refused:
            await transport.send(message(), "me@example.org")
        ok = await transport.send(message("ann@example.org"), "me@example.org")
        await transport.close()
    assert refused.value.code == 550 and refused.value.permanent
    assert ok == "250 queued" and server.connections == 1 and len(server.bodies) == 1
    assert b"RSET" in server.lines


async def test_data_accepted_after_a_refused_recipient_is_ended_empty(
    smtp_settings: Callable[[int], Settings],
) -> None:
    """RFC 2920 says a server must refuse DATA when no recipient was accepted; one that says
    354 anyway gets an empty message (no recipient: delivered to nobody), not the digest."""
    server = Scripted(replies={b"RCPT": [b"550 5.1.1 no such user"]})
    async with scripted(server) as port:
        transport = SmtpTransport(smtp_settings(port))
        await transport.start()
        with pytest.raises(DeliveryError) as refused:
            await transport.send(message(), "me@example.org")
        ok = await transport.send(message("ann@example.org"), "me@example.org")
        await transport.close()
    assert refused.value.code == 550 and refused.value.permanent
    assert server.bodies[0] == b".\r\n" and ok == "250 queued"


async def test_a_421_then_a_hang_up_is_the_421(smtp_settings: Callable[[int], Settings]) -> None:
    server = Scripted(replies={b"MAIL": [b"421 4.3.2 going down"]}, hang_up_after=b"MAIL")
    async with scripted(server) as port:
        transport = SmtpTransport(smtp_settings(port))
        await transport.start()
        with pytest.raises(DeliveryError) as gone:
            await transport.send(message(), "me@example.org")
        ok = await transport.send(message(), "me@example.org")  # on a new connection
        await transport.close()
    assert gone.value.code == 421 and not gone.value.permanent
    assert ok == "250 queued" and server.connections == 2


async def test_a_server_that_never_answers_times_out_and_nothing_was_sent(
    smtp_settings: Callable[[int], Settings],
) -> None:
    server = Scripted(silent=True)
    async with scripted(server) as port:
        transport = SmtpTransport(smtp_settings(port))
        await transport.start()
        with pytest.raises(DeliveryError) as late:
            await transport.send(message(), "me@example.org")
        await transport.close()
    assert not late.value.permanent and server.bodies == []
    assert envelopes(server) == [b"MAIL FROM", b"RCPT TO"]


async def test_the_timeout_is_per_reply_not_for_the_whole_envelope(
    smtp_settings: Callable[[int], Settings],
) -> None:
    """A server that takes 0.6 s on each of MAIL and RCPT (sender callouts, blocklist look-ups)
    with a 1 s timeout per command: sent, as one command at a time would be (the three replies
    had one timeout between them: every message failed, forever)."""
    server = Scripted(delays={b"MAIL": [0.6], b"RCPT": [0.6]})
    async with scripted(server) as port:
        transport = SmtpTransport(smtp_settings(port))
        await transport.start()
        ok = await transport.send(message(), "me@example.org")
        await transport.close()
    assert ok == "250 queued" and len(server.bodies) == 1


async def test_replies_owed_after_a_refusal_never_answer_the_next_message(
    smtp_settings: Callable[[int], Settings],
) -> None:
    """MAIL refused at once, then the server stalls past the timeout before answering RCPT
    and DATA. The connection is out of step: it is closed, so those late replies are never
    read as the next subscriber's (a 503 taken for the next MAIL's reply was a Fatal "sender
    refused" that stopped the whole run)."""
    server = Scripted(
        replies={
            b"MAIL": [b"451 4.7.1 try later"],
            b"RCPT": [b"503 5.5.1 need MAIL"],
            b"DATA": [b"503 5.5.1 need MAIL"],
        },
        delays={b"RCPT": [1.5]},
        first_only=True,
    )
    async with scripted(server) as port:
        transport = SmtpTransport(smtp_settings(port))
        await transport.start()
        with pytest.raises(DeliveryError) as later:
            await transport.send(message("a@example.org"), "me@example.org")
        sent = [
            await transport.send(message(f"{who}@example.org"), "me@example.org")
            for who in ("b", "c")
        ]
        await transport.close()
    assert later.value.code == 451 and not later.value.permanent
    assert sent == ["250 queued", "250 queued"] and len(server.bodies) == 2
    assert server.connections == 2
