"""What one run did: the report printed and returned, and the running tally behind it."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


# --- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one run did; rows finished by earlier runs are not counted (see `unchanged`).

    With `dry_run`, `sent` and `skipped` count what a real run would send and skip.
    `failures` maps "temporary: <reply>" / "permanent: <reply>" to the number of subscribers.
    """

    edition: dt.date
    sent: int = 0
    skipped: int = 0
    failed_temporary: int = 0
    failed_permanent: int = 0
    unknown: int = 0  # transmitted, no final reply: not resent until NEWSLETTER_UNKNOWN_RETRY_AFTER
    failures: Mapping[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    unchanged: int = 0  # already sent/skipped/failed_permanent, or a retry not yet due
    pending: int = 0  # planned but not attempted: the run was stopped
    interrupted: bool = False
    dry_run: bool = False
    transport: str = ""

    @property
    def failed(self) -> int:
        return self.failed_temporary + self.failed_permanent

    @property
    def complete(self) -> bool:
        """Every subscriber in scope has a final or scheduled outcome: nothing left planned."""
        return not self.interrupted and self.pending == 0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "edition": self.edition.isoformat(),
            "sent": self.sent,
            "skipped": self.skipped,
            "failed_temporary": self.failed_temporary,
            "failed_permanent": self.failed_permanent,
            "unknown": self.unknown,
            "pending": self.pending,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def summary(self) -> str:
        verb = "would send" if self.dry_run else "sent"
        head = (
            f"edition {self.edition}: {verb} {self.sent}, skipped {self.skipped}, "
            f"failed {self.failed} ({self.failed_temporary} temporary, "
            f"{self.failed_permanent} permanent), unknown {self.unknown}, "
            f"already done {self.unchanged}; "
            f"{self.elapsed_s:.1f} s, {self.rate:.0f} messages/s"
        )
        lines = [head + (f" via {self.transport}" if self.transport else "")]
        if self.interrupted:
            lines.append(f"  interrupted: {self.pending} planned message(s) left for the next run")
        if self.unknown:
            lines.append(
                f"  unknown: {self.unknown} message(s) went out but the server never confirmed "
                "them; not resent at once (NEWSLETTER_UNKNOWN_RETRY_AFTER, or send --resend)"
            )
        for reason, n in sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:>6}  {reason}")
        return "\n".join(lines)


@dataclass(slots=True)
class Tally:
    sent: int = 0
    skipped: int = 0
    failed_temporary: int = 0
    failed_permanent: int = 0
    unknown: int = 0
    unchanged: int = 0
    pending: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def done(self) -> int:
        return (
            self.sent
            + self.skipped
            + self.failed_temporary
            + self.failed_permanent
            + self.unknown
            + self.unchanged
        )
