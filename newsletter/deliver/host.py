"""The senders on this host: how many render workers one of them should keep busy.

Several `newsletter send` processes may share an edition (PostgreSQL) on one machine. Each
forks render workers; with one pool per core in every sender, N senders run N times as many
CPU-bound processes as there are cores, and pay for it in switches and in caches each warmed
N times. Each sender therefore holds an flock on a file of its own in a folder shared by the
host's senders: the kernel drops the lock when its process ends, even by SIGKILL, so the locked
files are the live senders, and each sender's share of the cores is the cores over them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import tempfile
import time
from pathlib import Path

RECOUNT_S = 1.0  # how stale a sender's view of the others may get


def senders_folder() -> Path:
    return Path(tempfile.gettempdir()) / f"newsletter-senders-{os.getuid()}"


def usable_cpus() -> int:
    """The cores this process may run on (its affinity, else the machine's)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class HostSenders:
    """This process as one of the host's senders, while it is open."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or senders_folder()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.path = self.folder / f"{name}.lock"
        part = self.folder / f"{name}.part"
        self.fd: int | None = os.open(part, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.rename(part, self.path)  # locked before it is seen: an unlocked .lock file is dead
        self._count = (0, 0.0)  # (senders, when counted)

    def count(self) -> int:
        """The live senders on this host, this one included (recounted at most every
        RECOUNT_S)."""
        n, when = self._count
        now = time.monotonic()
        if n and now - when < RECOUNT_S:
            return n
        n = 1 if self.fd is not None else 0  # our own file, without opening it again
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.path != str(self.path) and entry.name.endswith(".lock"):
                    n += self._alive(entry.path)
        self._count = (max(n, 1), now)
        return max(n, 1)

    @staticmethod
    def _alive(path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False  # gone meanwhile: its sender finished
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        else:  # nobody holds it: a dead sender's
            with contextlib.suppress(OSError):
                os.unlink(path)
            return False
        finally:
            os.close(fd)

    def share(self, cpus: int) -> int:
        """This sender's share of `cpus` cores: at least one."""
        return max(1, cpus // self.count())

    def close(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
