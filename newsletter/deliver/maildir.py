"""The local transport: a real Maildir (tmp/ new/ cur/) that mutt or Thunderbird can open.

Used when no SMTP host is configured, so the main job works on a fresh machine. Delivery follows
the Maildir protocol: write the message under tmp/ with a unique name (time.pid_counter.host)
and fsync it, then link it into new/ (atomic, and never over an existing file), remove the tmp
name and fsync new/ so the new entry survives a crash. Readers only ever see whole messages.
Files use LF line endings, as a local delivery agent writes them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from newsletter.deliver.failures import NotStarted
from newsletter.deliver.wire import message_bytes
from newsletter.errors import DeliveryError
from newsletter.models import RenderedEmail

SUBDIRS = ("tmp", "new", "cur")
# Process-wide, so two transports in one process (one per run) never reuse a name in the same
# second; next() is atomic under the GIL.
_COUNTER = itertools.count(1)


def _host_part() -> str:
    # The Maildir spec escapes "/" and ":" in the host part; ":" separates the info suffix.
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"


class MaildirTransport:
    """Deliver each message as one file in `path/new/`; safe to use from several tasks."""

    concurrency = 4  # fsync-bound: a few writers in threads keep the disk busy

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.name = f"Maildir {self.path}"
        self._host = _host_part()

    async def start(self) -> None:
        await asyncio.to_thread(self.create)

    def create(self) -> None:
        try:
            for sub in SUBDIRS:
                (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(
                f"cannot create the Maildir {self.path} ({exc.strerror}); set "
                "NEWSLETTER_OUTBOX_DIR to a writable folder or configure NEWSLETTER_SMTP_HOST",
                permanent=True,
            ) from exc

    async def send(
        self,
        message: RenderedEmail,
        sender: str,
        wire: bytes | None = None,
        may_start: Callable[[], bool] | None = None,
    ) -> str:
        if may_start is not None and not may_start():
            raise NotStarted
        name = await asyncio.to_thread(self.deliver, message_bytes(message.raw, wire))
        return f"250 delivered to {self.path / 'new' / name}"

    def deliver(self, raw: bytes) -> str:
        """Write one message; returns its file name under new/."""
        data = raw.replace(b"\r\n", b"\n")
        while True:
            name = f"{int(time.time())}.{os.getpid()}_{next(_COUNTER)}.{self._host}"
            tmp, new = self.path / "tmp" / name, self.path / "new" / name
            try:
                self._write(tmp, data)
            except FileExistsError:  # a leftover of an earlier process with our pid
                continue
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DeliveryError(f"cannot write to the Maildir {self.path}: {exc}") from exc
            try:
                os.link(tmp, new)  # unlike rename, a link never replaces an existing message
            except FileExistsError:
                tmp.unlink()
                continue
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DeliveryError(f"cannot write to the Maildir {self.path}: {exc}") from exc
            tmp.unlink()
            _fsync_dir(new.parent)
            return name

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    async def close(self) -> None:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
