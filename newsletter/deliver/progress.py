"""Progress of a run: a rich bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from newsletter.deliver.report import Tally

log = logging.getLogger(__name__)


PROGRESS_LOG_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal


# --- progress -----------------------------------------------------------------------------------
class Progress:
    """A rich progress bar when stderr is a terminal, a log line every few seconds otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self._started = self._last = time.monotonic()
        self._bar: Any = None
        if sys.stderr.isatty() and total:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[counts]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(label, total=total, counts="")
            self._bar.start()

    def update(self, tally: Tally) -> None:
        counts = (
            f"sent {tally.sent} · skipped {tally.skipped} · "
            f"failed {tally.failed_temporary + tally.failed_permanent}"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=tally.done, counts=counts)
            return
        now = time.monotonic()
        if now - self._last >= PROGRESS_LOG_EVERY:
            self._last = now
            rate = tally.sent / (now - self._started)
            log.info(
                "%s: %d/%d done (%s), %.0f messages/s",
                self.label,
                tally.done,
                self.total,
                counts,
                rate,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
