"""Fetch: each day's listing from the Daily Papers API into the seeds folder and the store.

`GET {NEWSLETTER_SOURCE_URL}?date=YYYY-MM-DD` for each day asked. `SourceClient` is the HTTP
edge (httpx): timeouts, a User-Agent naming the project, retries with exponential backoff and
jitter on connection errors, timeouts and 5xx, `Retry-After` honoured on 429 and 503, and
conditional requests (If-None-Match / If-Modified-Since) from the validators the store kept for
the day, so fetching an unchanged day again writes nothing. The answer is checked by the same
pure parser that ingest uses (`ingest.parse_json_dump`) before anything is written; a malformed
or truncated answer is refused with the URL and the reason. A good answer is stored, then
written atomically as the day's dump (`daily-papers-YYYY-MM-DD.json`, the raw JSON): one the
store refuses leaves no dump behind. A day with no papers writes no dump and makes no edition.
One bad day never stops the others, even when it fails in a way no check foresaw.

`fetch_days` serves `newsletter fetch`; `fetch_before_firing` is the daemon's hook: bounded in
time, and under a per-day lock so several daemons fetch a day once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import httpx

from newsletter import ingest
from newsletter.errors import FetchError, IngestError, LockHeld, NewsletterError, StoreError
from newsletter.models import DailyListing
from newsletter.settings import SEEDS_DIR, Settings, is_bundled
from newsletter.store import Store

log = logging.getLogger(__name__)

DayStatus = Literal["fetched", "unchanged", "empty", "failed"]

TIMEOUT = httpx.Timeout(20.0, connect=5.0)  # per request: connect, then each read/write/pool
ATTEMPTS = 4  # per day: the first request and three retries
BACKOFF = 1.0  # first retry after ~1 s, then ~2 s, ~4 s (with jitter)
MAX_RETRY_AFTER = 60.0  # a longer Retry-After gives up on the day (try again later)
MAX_BODY = ingest.MAX_DUMP_BYTES  # a day's answer is ~100 KB; a runaway body is refused
FIRING_BUDGET = 15.0  # seconds the daemon spends fetching before a firing, all days together


def user_agent() -> str:
    try:
        own = version("newsletter")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        own = "dev"
    return f"newsletter/{own} (self-hosted trending-papers digest; httpx/{httpx.__version__})"


@dataclass(frozen=True, slots=True)
class Answer:
    """The source's answer for one day: a body (200) or "not modified" (304)."""

    url: str
    body: bytes | None  # None: not modified since the validators sent
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class DayOutcome:
    """One day's result, as `fetch --json` prints it."""

    date: str
    status: DayStatus
    papers: int
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def retry_after(value: str | None, now: dt.datetime | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds, or an HTTP-date measured from
    `now` (the answer's own Date header; None when it has none: the backoff decides)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    if now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def _server_date(resp: httpx.Response) -> dt.datetime | None:
    try:
        return email.utils.parsedate_to_datetime(resp.headers.get("Date", ""))
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, base: float) -> float:
    """Exponential backoff with full jitter: attempt 1 waits up to `base`, 2 up to 2x, ..."""
    delay: float = base * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
    return delay


class SourceClient:
    """The HTTP edge: one httpx client for a run (connections reused across days)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout | float = TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff: float | None = None,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        self.base_url = base_url
        self.attempts = attempts
        self.backoff = BACKOFF if backoff is None else backoff
        self.max_retry_after = max_retry_after
        self._http = httpx.AsyncClient(
            timeout=timeout,
            headers={"User-Agent": user_agent(), "Accept": "application/json"},
            follow_redirects=True,
        )

    async def __aenter__(self) -> SourceClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._http.aclose()

    def url(self, date: dt.date) -> str:
        # merged: a query the source URL carries (a mirror's key) is kept
        return str(httpx.URL(self.base_url).copy_merge_params({"date": date.isoformat()}))

    async def get_day(
        self, date: dt.date, *, etag: str | None = None, last_modified: str | None = None
    ) -> Answer:
        """The day's answer; FetchError naming the URL once the retries are spent."""
        url = self.url(date)
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(url, headers)
            except _Retry as retry:
                if attempt >= self.attempts:
                    raise FetchError(
                        url,
                        f"{retry.reason} (gave up after {attempt} attempts)",
                        status=retry.status,
                    ) from None
                wait = (
                    retry.wait if retry.wait is not None else backoff_delay(attempt, self.backoff)
                )
                if wait > self.max_retry_after:
                    raise FetchError(
                        url,
                        f"{retry.reason}; the server asks to wait {wait:.0f} s, longer than "
                        f"{self.max_retry_after:.0f} s: try again later",
                        status=retry.status,
                    ) from None
                log.info("%s: %s; retrying in %.1f s", url, retry.reason, wait)
                await asyncio.sleep(wait)

    async def _once(self, url: str, headers: dict[str, str]) -> Answer:
        try:
            async with self._http.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 304:
                    return Answer(url, None, *_validators(resp, headers))
                if resp.status_code == 429 or resp.status_code >= 500:
                    wait = retry_after(resp.headers.get("Retry-After"), _server_date(resp))
                    raise _Retry(f"HTTP {resp.status_code} {resp.reason_phrase}", wait, resp)
                if resp.status_code != 200:
                    text = (await resp.aread())[:200].decode("utf-8", "replace")
                    raise FetchError(
                        url,
                        f"HTTP {resp.status_code} {resp.reason_phrase}: {' '.join(text.split())}"
                        + ("; is NEWSLETTER_SOURCE_URL right?" if resp.status_code == 404 else ""),
                        status=resp.status_code,
                    )
                body = await _read_capped(resp, url)
                return Answer(url, body, *_validators(resp, {}))
        except httpx.TimeoutException as exc:
            raise _Retry(f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise _Retry(f"connection error: {exc or type(exc).__name__}") from exc


class _Retry(Exception):
    """A temporary failure: retry after `wait` seconds (None: the backoff decides)."""

    def __init__(
        self, reason: str, wait: float | None = None, resp: httpx.Response | None = None
    ) -> None:
        self.reason = reason
        self.wait = wait
        self.status = resp.status_code if resp is not None else None
        super().__init__(reason)


def _validators(resp: httpx.Response, sent: dict[str, str]) -> tuple[str | None, str | None]:
    """The response's ETag and Last-Modified; a 304 may omit them, so keep the ones sent."""
    etag = resp.headers.get("ETag") or sent.get("If-None-Match")
    modified = resp.headers.get("Last-Modified") or sent.get("If-Modified-Since")
    return etag, modified


async def _read_capped(resp: httpx.Response, url: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY:
            raise FetchError(url, f"the answer is larger than {MAX_BODY // 2**20} MiB; refused")
        chunks.append(chunk)
    return b"".join(chunks)


# --- days: fetch, check, write, ingest -------------------------------------------------------
def dump_folder(settings: Settings) -> Path:
    """Where fetched days are written: the seeds folder, or `seeds/` in the working folder
    when the seeds folder is the bundled (read-only) example."""
    folder = settings.seeds_dir
    return SEEDS_DIR if is_bundled(folder) else folder


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def fetch_day(
    client: SourceClient,
    settings: Settings,
    store: Store,
    date: dt.date,
    *,
    now: dt.datetime,
) -> DayOutcome:
    """Fetch, check, store and write one day; a failure is the outcome, never raised
    (except a StoreError: without the store nothing can be recorded)."""
    path = dump_folder(settings) / ingest.json_dump_name(date)
    url = client.url(date)
    known = store.fetched_day(date)
    usable = known is not None and known.url == url and (known.papers == 0 or path.is_file())
    try:
        answer = await client.get_day(
            date,
            etag=known.etag if usable and known else None,
            last_modified=known.last_modified if usable and known else None,
        )
        if answer.body is None:
            if known is None:
                raise FetchError(url, "HTTP 304 Not Modified to an unconditional request")
            status: DayStatus = "empty" if known.papers == 0 else "unchanged"
            return DayOutcome(date.isoformat(), status, known.papers)
        listing = _check(answer, path, date, settings)
        count = len(listing.entries)
        status = "empty" if not count else "unchanged"
        if count:
            fresh = not (path.is_file() and path.read_bytes() == answer.body)
            # stored first: an answer the store refuses never becomes a dump that every later
            # ingest would trip over
            saved = _save(store, listing, url, now=now)
            if fresh:
                write_atomically(path, answer.body)
                for warning in listing.warnings:
                    log.warning("%s", warning)
            if saved != "unchanged" or fresh:
                status = "fetched"
        store.record_fetch(
            date,
            url=url,
            etag=answer.etag,
            last_modified=answer.last_modified,
            papers=count,
            now=now,
        )
        return DayOutcome(date.isoformat(), status, count)
    except FetchError as exc:
        return DayOutcome(date.isoformat(), "failed", 0, str(exc))
    except StoreError:
        raise  # before OSError: a lost connection and a timeout are OSErrors too
    except OSError as exc:
        reason = f"cannot write {path} ({exc.strerror}); check NEWSLETTER_SEEDS_DIR"
        return DayOutcome(date.isoformat(), "failed", 0, str(FetchError(url, reason)))
    except Exception as exc:  # a failure no check foresaw (a bug): this day only, logged
        log.exception("fetch %s: unexpected error", date)
        reason = (
            f"fetching the day stopped at an unexpected {type(exc).__name__}: "
            f"{ingest.first_line(exc)}; the other days go on; fetch it again later, and report "
            "the error, with the URL, if it recurs"
        )
        return DayOutcome(date.isoformat(), "failed", 0, str(FetchError(url, reason)))


def _save(store: Store, listing: DailyListing, url: str, *, now: dt.datetime) -> str:
    """Store the day's listing; FetchError when this answer's data is what the store refuses
    (an error no check foresaw). A StoreError (the database unreachable, a timeout) is raised
    as it is: no other day could be stored either."""
    try:
        return store.save_listing(listing, now=now).status
    except StoreError:
        raise
    except Exception as exc:
        log.exception("%s: unexpected error while storing the answer", url)
        raise FetchError(
            url,
            f"the store refused the answer (unexpected {type(exc).__name__}: "
            f"{ingest.first_line(exc)}); nothing stored, no dump written; the other days go on "
            "(report the error, with the URL)",
        ) from exc


def _check(answer: Answer, path: Path, date: dt.date, settings: Settings) -> DailyListing:
    """The answer as the listing ingest will read from the dump; refused with the URL."""
    assert answer.body is not None
    try:
        return ingest.parse_json_dump(
            answer.body, source=str(path), date=date, max_papers=settings.max_papers_per_dump
        )
    except IngestError as exc:
        where = f"line {exc.line}: " if exc.line is not None else ""
        raise FetchError(answer.url, f"{where}{exc.reason}; nothing stored") from exc


async def fetch_days(
    settings: Settings,
    store: Store,
    dates: Sequence[dt.date],
    *,
    now: dt.datetime,
    client: SourceClient | None = None,
) -> list[DayOutcome]:
    """Every day in order; one bad day never stops the others."""
    async with client or SourceClient(settings.source_url) as source:
        return [await fetch_day(source, settings, store, d, now=now) for d in dates]


def days_since(start: dt.date, today: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((today - start).days + 1)]


async def fetch_before_firing(
    settings: Settings,
    store: Store,
    dates: Sequence[dt.date],
    *,
    now: dt.datetime,
    budget: float | None = None,
    client: SourceClient | None = None,
) -> list[DayOutcome]:
    """The daemon's fetch before a firing: each firing's local day, once (another process
    fetching the same day is left to it), at most `budget` seconds in all. Whatever happens
    is logged, never raised: the stored editions are sent either way."""
    budget = FIRING_BUDGET if budget is None else budget
    outcomes: list[DayOutcome] = []
    try:
        async with asyncio.timeout(budget), client or SourceClient(settings.source_url) as source:
            for date in dict.fromkeys(dates):
                try:
                    with store.sender_lock(f"fetch-{date.isoformat()}"):
                        outcome = await fetch_day(source, settings, store, date, now=now)
                except LockHeld:
                    log.info("fetch %s: another process is fetching that day; left to it", date)
                    continue
                outcomes.append(outcome)
                _log_outcome(outcome)
    except TimeoutError:
        log.error(
            "fetch: gave up after %g s (%s not fetched); sending what is stored",
            budget,
            ", ".join(d.isoformat() for d in dates if d.isoformat() not in _dates(outcomes)),
        )
    except NewsletterError as exc:
        log.error("fetch: %s; sending what is stored", exc)
    except Exception:  # a bug outside any one day: logged with its traceback, the firing goes on
        log.exception("fetch: unexpected error; sending what is stored")
    return outcomes


def _dates(outcomes: Sequence[DayOutcome]) -> set[str]:
    return {o.date for o in outcomes}


def _log_outcome(o: DayOutcome) -> None:
    if o.status == "failed":
        log.error("fetch %s failed: %s; sending what is stored", o.date, o.error)
    elif o.status == "empty":
        log.info("fetch %s: no papers listed that day: no new edition from it", o.date)
    else:
        log.info("fetch %s: %s, %d papers", o.date, o.status, o.papers)
