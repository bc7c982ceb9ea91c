"""Peak RSS of a child process and its descendants, read from /proc while they run.

`wait4`'s `ru_maxrss` is no good here: Linux starts a forked child's high-water mark at its
parent's RSS when it forks (and carries it across exec), so a child of a large benchmark process
reports the benchmark's memory, not its own. `VmHWM` in /proc/PID/status is the high-water mark
of the process's own address space since its exec; a `Watch` samples it for the process and
every descendant (render workers, found by their parent pid) every few tenths of a second
and keeps the largest.
"""

from __future__ import annotations

import threading
from pathlib import Path


def _hwm(pid: int) -> int:
    """VmHWM of `pid` in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _parents() -> dict[int, list[int]]:
    """Every process's children, from the parent pid in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # the name may hold spaces or ")"
        children.setdefault(ppid, []).append(int(entry.name))
    return children


class Watch:
    """Samples the peak RSS of `pid`'s process tree until `stop()`; `peak` is the largest of
    any one process (bytes)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak = 0
        self.peaks: dict[int, int] = {}  # each process's own peak (pid -> bytes)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.every_s)

    def sample(self) -> None:
        children = _parents()
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            hwm = _hwm(pid)
            self.peak = max(self.peak, hwm)
            self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            todo += children.get(pid, [])

    def stop(self) -> int:
        """Stop sampling; the peak seen (call before reaping the process: a reaped process
        has no /proc entry to read its last high-water mark from)."""
        self._done.set()
        self._thread.join()
        return self.peak

    def parent_and_children(self) -> tuple[int, int]:
        """(peak of `pid` itself, largest peak of any of its descendants), bytes."""
        children = [v for pid, v in self.peaks.items() if pid != self.pid]
        return self.peaks.get(self.pid, 0), max(children, default=0)
