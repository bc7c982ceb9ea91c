"""Scheduling with an injected clock: DST, far-east and far-west zones, missing and bunched dumps,
downtime across a send time. No sleeps: every function takes `now`."""

from __future__ import annotations

import datetime as dt

import pytest

from newsletter.models import Subscriber, Topic
from newsletter.schedule import (
    Group,
    decide,
    firing_on,
    group_subscribers,
    last_firing,
    next_firing,
)

UTC = dt.UTC
TOPIC = (Topic("RL", ("reinforcement learning",)),)


def sub(email: str, tz: str = "UTC", at: str = "07:00") -> Subscriber:
    hh, mm = map(int, at.split(":"))
    return Subscriber(email=email, timezone=tz, send_at=dt.time(hh, mm), topics=TOPIC)


def group(tz: str, at: str = "07:00", *emails: str) -> Group:
    return group_subscribers([sub(e, tz, at) for e in (emails or ("a@example.org",))])[0]


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_grouping_by_zone_and_time() -> None:
    subs = [
        sub("a@example.org", "Asia/Tokyo"),
        sub("b@example.org", "Europe/Berlin"),
        sub("c@example.org", "Asia/Tokyo"),
        sub("d@example.org", "Asia/Tokyo", "08:00"),
    ]
    groups = group_subscribers(subs)
    assert [g.key for g in groups] == [
        "Asia/Tokyo|07:00",
        "Asia/Tokyo|08:00",
        "Europe/Berlin|07:00",
    ]
    assert groups[0].emails == ["a@example.org", "c@example.org"]


def test_tokyo_and_berlin_both_at_seven_local() -> None:
    day = dt.date(2026, 3, 17)
    assert firing_on(group("Asia/Tokyo"), day) == utc(2026, 3, 16, 22, 0)
    assert firing_on(group("Europe/Berlin"), day) == utc(2026, 3, 17, 6, 0)


@pytest.mark.parametrize(
    ("tz", "before", "after"),
    [
        # London springs forward on 2026-03-29: 07:00 local is 07:00 UTC, then 06:00 UTC
        ("Europe/London", utc(2026, 3, 28, 7, 0), utc(2026, 3, 29, 6, 0)),
        # New York springs forward on 2026-03-08
        ("America/New_York", utc(2026, 3, 7, 12, 0), utc(2026, 3, 8, 11, 0)),
    ],
)
def test_dst_spring_forward_keeps_local_time(
    tz: str, before: dt.datetime, after: dt.datetime
) -> None:
    g = group(tz)
    assert next_firing(g, before - dt.timedelta(minutes=1)) == before
    assert next_firing(g, before) == after  # strictly after: the next day's 07:00 local


def test_dst_autumn_fires_once_a_day() -> None:
    g = group("Europe/Berlin", "02:30")  # 02:30 happens twice on 2026-10-25
    first = firing_on(g, dt.date(2026, 10, 25))
    assert first == utc(2026, 10, 25, 0, 30)  # the first occurrence (CEST)
    assert next_firing(g, first) == firing_on(g, dt.date(2026, 10, 26))


def test_send_time_in_the_spring_gap_fires_after_the_gap() -> None:
    g = group("Europe/Berlin", "02:30")  # 02:00 -> 03:00 on 2026-03-29
    fired = firing_on(g, dt.date(2026, 3, 29))
    assert fired == utc(2026, 3, 29, 1, 30)  # = 03:30 CEST, right after the jump
    assert fired > firing_on(g, dt.date(2026, 3, 28))


def test_utc_plus_14_and_minus_12() -> None:
    kiritimati, baker = group("Pacific/Kiritimati"), group("Etc/GMT+12")
    # 07:00 on Mar 17 in UTC+14 is 17:00 UTC on Mar 16; in UTC-12 it is 19:00 UTC on Mar 17
    assert firing_on(kiritimati, dt.date(2026, 3, 17)) == utc(2026, 3, 16, 17, 0)
    assert firing_on(baker, dt.date(2026, 3, 17)) == utc(2026, 3, 17, 19, 0)
    now = utc(2026, 3, 17, 12, 0)
    assert last_firing(kiritimati, now) == utc(2026, 3, 16, 17, 0)
    assert last_firing(baker, now) == utc(2026, 3, 16, 19, 0)


def _decide(g: Group, now: dt.datetime, **kw: object) -> object:
    args: dict[str, object] = {
        "last_served": None,
        "newest_listing": dt.date(2026, 3, 17),
        "watermarks": {},
        "catch_up": True,
    }
    args.update(kw)
    return decide(g, now, **args)  # type: ignore[arg-type]


def test_at_the_send_time_the_newest_listing_goes_out() -> None:
    g = group("Europe/Berlin")
    d = _decide(g, utc(2026, 3, 17, 6, 0))
    assert d.action == "send" and d.edition == dt.date(2026, 3, 17)  # type: ignore[attr-defined]
    assert d.firing == utc(2026, 3, 17, 6, 0)  # type: ignore[attr-defined]


def test_served_firing_is_not_served_twice() -> None:
    g = group("Europe/Berlin")
    now = utc(2026, 3, 17, 6, 5)
    d = _decide(g, now, last_served=utc(2026, 3, 17, 6, 0))
    assert d.action == "not-due"  # type: ignore[attr-defined]


def test_a_day_with_no_dump_sends_nothing() -> None:
    g = group("Europe/Berlin")
    d = _decide(
        g,
        utc(2026, 3, 18, 6, 0),
        last_served=utc(2026, 3, 17, 6, 0),
        watermarks={"a@example.org": dt.date(2026, 3, 17)},
    )
    assert d.action == "nothing-new" and d.recipients == ()  # type: ignore[attr-defined]


def test_two_dumps_at_once_coalesce_to_the_newest() -> None:
    g = group("Europe/Berlin")
    d = _decide(
        g,
        utc(2026, 3, 19, 6, 0),
        newest_listing=dt.date(2026, 3, 19),  # Mar 18 and Mar 19 arrived together
        watermarks={"a@example.org": dt.date(2026, 3, 17)},
    )
    assert d.action == "send" and d.edition == dt.date(2026, 3, 19)  # type: ignore[attr-defined]


def test_never_an_edition_older_than_the_last_received() -> None:
    g = group("Europe/Berlin")
    d = _decide(g, utc(2026, 3, 19, 6, 0), watermarks={"a@example.org": dt.date(2026, 3, 20)})
    assert d.action == "nothing-new"  # type: ignore[attr-defined]


def test_only_subscribers_without_the_edition_receive_it() -> None:
    g = group("UTC", "07:00", "old@example.org", "new@example.org")
    d = _decide(g, utc(2026, 3, 17, 7, 0), watermarks={"old@example.org": dt.date(2026, 3, 17)})
    assert [s.email for s in d.recipients] == ["new@example.org"]  # type: ignore[attr-defined]


def test_downtime_across_the_send_time_catches_up_today() -> None:
    g = group("Europe/Berlin")
    now = utc(2026, 3, 17, 9, 30)  # back at 10:30 local, 07:00 passed while down
    d = _decide(g, now, last_served=utc(2026, 3, 16, 6, 0))
    assert d.action == "send" and d.firing == utc(2026, 3, 17, 6, 0)  # type: ignore[attr-defined]
    off = _decide(g, now, last_served=utc(2026, 3, 16, 6, 0), catch_up=False)
    assert off.action == "missed"  # type: ignore[attr-defined]


def test_a_send_time_that_came_while_another_group_was_sending_is_not_missed() -> None:
    """The daemon runs one pass at a time: group B's 07:05 firing waited for group A's long
    send and started at 07:30. With catch-up off it was called missed and the day was lost;
    its lateness counts from when it was asked for."""
    g = group("UTC", "07:05")
    now, queued = utc(2026, 3, 17, 7, 30), utc(2026, 3, 17, 7, 5)
    d = _decide(g, now, last_served=utc(2026, 3, 16, 7, 5), catch_up=False, queued=queued)
    assert d.action == "send" and d.firing == utc(2026, 3, 17, 7, 5)  # type: ignore[attr-defined]
    down = _decide(g, now, last_served=utc(2026, 3, 16, 7, 5), catch_up=False, queued=now)
    assert down.action == "missed"  # type: ignore[attr-defined]  # a start at 07:30 is late


def test_downtime_over_several_days_never_bursts() -> None:
    g = group("Europe/Berlin")
    # down from Mar 14 to Mar 17 05:00 local (before today's send time): yesterday's is missed,
    # the next real firing sends only the newest listing
    now = utc(2026, 3, 17, 4, 0)
    d = _decide(g, now, last_served=utc(2026, 3, 14, 6, 0))
    assert d.action == "missed"  # type: ignore[attr-defined]
    later = _decide(g, utc(2026, 3, 17, 6, 0), last_served=d.firing)  # type: ignore[attr-defined]
    assert later.action == "send" and later.edition == dt.date(2026, 3, 17)  # type: ignore[attr-defined]


def test_decide_is_pure_and_deterministic() -> None:
    g = group("Asia/Tokyo")
    now = utc(2026, 3, 16, 22, 0)
    assert _decide(g, now) == _decide(g, now)
