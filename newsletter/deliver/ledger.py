"""Group commit of the delivery ledger: everything that finished while one transaction ran goes
into the next, on one dedicated thread. The SQL is the store's (`Store.record_outcomes`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from newsletter.errors import ConnectionLost, StoreError
from newsletter.models import LedgerOutcome
from newsletter.store import Store

log = logging.getLogger(__name__)


T = TypeVar("T")
COMMIT_BATCH, COMMIT_GATHER_S = 32, 0.002  # a smaller group waits this long for company
LOST_RETRIES = 8  # with retry_lost: about 15 s of tries on fresh connections


def threadable(store: Store) -> bool:
    """An in-memory SQLite database is private to its thread; anything else can be shared."""
    return not (store.dialect == "sqlite" and store.engine.url.database in (None, "", ":memory:"))


class LedgerWriter:
    """Group commit: everything that finished while one transaction ran goes into the next.

    Writes run on one dedicated thread, so the event loop keeps sending while the database
    commits. `sent` callers wait for their commit (that bounds the repeat window); failures
    and skips do not need to: losing them in a crash only means the next run retries them.
    """

    def __init__(
        self,
        store: Store,
        edition: dt.date,
        now: Callable[[], dt.datetime],
        *,
        retry_lost: bool = False,
        worker: str | None = None,
    ) -> None:
        self.store, self.edition, self.now = store, edition, now
        self.worker = worker  # PostgreSQL scale-out: outcomes never override another's claim
        self.retry_lost = retry_lost  # a dropped connection is tried again, not fatal
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix="ledger") if threadable(store) else None
        )
        self._pending: list[tuple[LedgerOutcome | None, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None  # the writer failed: every caller learns it
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        for attempt in range(LOST_RETRIES):
            try:
                return await self._call(fn, *args)
            except ConnectionLost as exc:
                if not self.retry_lost or attempt == LOST_RETRIES - 1:
                    raise
                delay = min(0.25 * 2**attempt, 3.0)
                log.warning("ledger: %s; trying again in %.2f s", exc.cause, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._executor is None:
                return fn(*args)
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(
                f"cannot write the delivery ledger ({type(cause).__name__}: {cause}); messages "
                "not yet recorded as sent will be sent again by the next run"
            ) from exc

    async def plan(
        self, items: Sequence[tuple[str, str, tuple[str, ...]]], *, refresh: bool = False
    ) -> None:
        if items:
            await self.call(self._plan, items, self.now(), refresh)

    def _plan(
        self, items: Sequence[tuple[str, str, tuple[str, ...]]], now: dt.datetime, refresh: bool
    ) -> None:
        self.store.plan_rows(self.edition, items, now=now, refresh=refresh)

    def _record(self, outcomes: Sequence[LedgerOutcome], now: dt.datetime) -> None:
        self.store.record_outcomes(self.edition, outcomes, now=now, worker=self.worker)

    def record(self, outcome: LedgerOutcome) -> None:
        if self._error is not None:
            raise self._error
        self._pending.append((outcome, None))
        self._wake.set()

    async def record_and_wait(self, outcome: LedgerOutcome) -> None:
        if self._error is not None:
            raise self._error
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, fut))
        self._wake.set()
        await fut

    async def flush(self) -> None:
        """Wait until everything recorded so far is committed."""
        if self._error is not None:
            raise self._error
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((None, fut))
        self._wake.set()
        await fut

    async def _run(self) -> None:
        batch: list[tuple[LedgerOutcome | None, asyncio.Future[None] | None]] = []
        try:
            while True:
                await self._wake.wait()
                if len(self._pending) < COMMIT_BATCH and not self._closed:
                    # a moment for more outcomes: each transaction costs ~0.3 ms of CPU
                    await asyncio.sleep(COMMIT_GATHER_S)
                self._wake.clear()
                batch, self._pending = self._pending, []
                outcomes = [o for o, _ in batch if o is not None]  # None: a flush
                if outcomes:
                    await self.call(self._record, outcomes, self.now())
                if batch:
                    for _, fut in batch:
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                if self._closed and not self._pending:
                    return
        except BaseException as exc:
            self._error = exc
            for _, fut in [*batch, *self._pending]:  # nobody may wait for ever
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            raise

    async def close(self) -> None:
        """Commit everything recorded so far, then stop."""
        self._closed = True
        self._wake.set()
        try:
            await asyncio.shield(self._task)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
