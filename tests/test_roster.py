"""A send's subscribers: the whole file checked first, then read again a chunk at a time from a
private copy, giving exactly what `load_subscribers` gives."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from newsletter import roster
from newsletter.addresses import address_key
from newsletter.errors import ConfigError, SubscriberConfigError
from newsletter.mailboxes import Mailboxes
from newsletter.roster import Roster, addresses, by_address, load_roster, pick
from newsletter.settings import Settings
from newsletter.subscribers import check_subscribers, load_subscribers

from .conftest import EXAMPLE_SUBSCRIBERS
from .test_deliver import World, make_world, running


def _file(tmp_path: Path, n: int, tail: str = "") -> Path:
    entry = (
        "  - email: Reader{i}@Example.org\n"
        "    name: Reader {i}\n"
        "{extra}"
        "    topics:\n"
        "      - name: T{t}\n"
        '        keywords: ["k{t}", shared]\n'
    )
    body = "".join(
        entry.format(i=i, t=i % 7, extra="    send_at: '06:30'\n\n  # a comment\n" * (i % 3 == 0))
        for i in range(n)
    )
    path = tmp_path / "subscribers.yaml"
    path.write_text("subscribers:\n" + body + tail, encoding="utf-8")
    return path


@pytest.mark.parametrize("tail", ["", "defaults: {max_papers: 5}\n", "\n# the end\n"])
def test_a_roster_reads_what_load_subscribers_reads(tmp_path: Path, tail: str) -> None:
    path = _file(tmp_path, 1000, tail)
    subs = load_roster(path)
    assert isinstance(subs, Roster)
    expected = load_subscribers(path)
    assert len(subs) == 1000 and list(subs) == expected
    assert subs[0] == expected[0] and subs[-1] == expected[-1] and subs[10:20] == expected[10:20]
    assert subs[999:2000] == expected[999:] and subs[5:5] == [] and subs[::400] == expected[::400]
    with pytest.raises(IndexError):
        subs[1000]
    keyed = by_address(subs)
    assert keyed[address_key(expected[567].email)] == expected[567]
    assert "nobody@example.org" not in keyed and len(keyed) == 1000
    assert addresses(subs) == [address_key(s.email) for s in expected]


def test_picking_reads_the_subscribers_of_any_keys_in_their_order(tmp_path: Path) -> None:
    path = _file(tmp_path, 300)
    subs, expected = load_roster(path), load_subscribers(path)
    assert isinstance(subs, Roster)
    order = [299, 5, 6, 7, 0, 150, 6, 298]  # runs, a repeat, both ends, out of order
    keys = [address_key(expected[i].email) for i in order]
    assert pick(by_address(subs), keys) == [expected[i] for i in order]
    assert pick(by_address(expected), [expected[i].email for i in order]) == pick(
        by_address(subs), keys
    )
    assert pick(by_address(subs), []) == []
    with pytest.raises(KeyError):
        subs.pick([keys[0], "nobody@example.org"])


def test_a_roster_reads_its_own_copy_whatever_happens_to_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, 300)
    subs = load_roster(path)
    before = load_subscribers(path)
    path.write_text("subscribers:\n  - email: other@example.org\n", encoding="utf-8")
    assert list(subs) == before
    path.unlink()
    assert subs[299] == before[299]


def test_a_roster_reads_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roster, "CHUNK", 7)
    path = _file(tmp_path, 50)
    assert list(load_roster(path)) == load_subscribers(path)


def test_every_problem_is_reported_before_a_roster_exists(tmp_path: Path) -> None:
    path = _file(tmp_path, 20)
    text = path.read_text(encoding="utf-8")
    bad = text.replace("Reader3@", "Reader2@").replace("name: T5", "name: ''")
    path.write_text(bad + "colour: blue\n", encoding="utf-8")
    with pytest.raises(SubscriberConfigError) as expected:
        load_subscribers(path)
    with pytest.raises(SubscriberConfigError) as got:
        load_roster(path)
    assert got.value.problems == expected.value.problems and len(got.value.problems) >= 3
    with pytest.raises(SubscriberConfigError, match="no such file"):
        load_roster(tmp_path / "missing.yaml")


def test_a_file_the_scanner_leaves_to_the_parser_is_loaded_whole(tmp_path: Path) -> None:
    path = tmp_path / "anchored.yaml"
    path.write_text(
        "subscribers:\n  - email: a@example.org\n    topics: [&t {name: T, keywords: [k]}]\n"
        "  - email: b@example.org\n    topics: [*t]\n",
        encoding="utf-8",
    )
    subs = load_roster(path)
    assert not isinstance(subs, Roster) and subs == load_subscribers(path)
    example = load_roster(EXAMPLE_SUBSCRIBERS)
    assert isinstance(example, Roster) and list(example) == load_subscribers(EXAMPLE_SUBSCRIBERS)


def test_checking_a_file_counts_what_loading_it_gives(tmp_path: Path) -> None:
    for path in (_file(tmp_path, 200), EXAMPLE_SUBSCRIBERS):
        outline = check_subscribers(path)
        subs = load_subscribers(path)
        assert len(outline.lines) == len(subs) and outline.scanned
        assert outline.topics == sum(len(s.topics) for s in subs)
        assert list(outline.lines) == [s.line for s in subs]


@pytest.fixture
def world(make_settings: Callable[..., Settings]) -> Iterator[World]:
    """The bundled seeds ingested, the example subscribers (see test_deliver)."""
    made = make_world(make_settings)
    yield made
    made.store.close()


async def test_a_send_reads_the_roster_and_delivers_what_the_list_delivers(
    world: World,
) -> None:
    subs = load_roster(EXAMPLE_SUBSCRIBERS)
    assert isinstance(subs, Roster) and list(subs) == world.subscribers
    async with running() as server:
        report = await world.send(server, subscribers=subs)
        again = await world.send(server, subscribers=subs)
        resent = await world.send(server, subscribers=subs, resend=[world.emails[1].upper()])
        with pytest.raises(ConfigError, match=r"nobody@example\.org"):
            await world.send(server, subscribers=subs, only=["nobody@example.org"])
    assert report.sent == len(world.emails) and again.sent == 0 and resent.sent == 1
    received = server.handler.by_rcpt()
    assert sorted(received) == sorted(world.emails)
    assert [len(received[e]) for e in world.emails] == [1, 2, 1, 1, 1]


def test_a_file_checked_before_is_not_checked_again_an_edited_one_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = tmp_path / "kept"
    kept.mkdir(mode=0o700)
    monkeypatch.setattr(roster, "_outline_folder", lambda: kept)
    path = _file(tmp_path, 40)
    first = load_roster(path)
    assert isinstance(first, Roster) and len(list(kept.glob("*.outline"))) == 1
    checked: list[str] = []
    check = roster.outline_subscribers
    monkeypatch.setattr(
        roster, "outline_subscribers", lambda *a: checked.append("again") or check(*a)
    )
    again = load_roster(path)
    assert checked == [] and list(again) == list(first) == load_subscribers(path)
    path.write_text(path.read_text().replace("Reader3@", "not an address "), encoding="utf-8")
    with pytest.raises(SubscriberConfigError, match="not an address"):
        load_roster(path)
    assert checked == ["again"] and len(list(kept.glob("*.outline"))) == 1  # errors: not kept


def test_outlines_are_kept_only_where_no_one_else_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roster.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = roster._outline_folder()
    assert folder is not None and folder.parent == tmp_path
    folder.chmod(0o777)
    assert roster._outline_folder() is None
    load_roster(_file(tmp_path, 3))
    assert list(folder.iterdir()) == []


def test_mailboxes_find_each_key_and_refuse_a_second_of_any() -> None:
    boxes = Mailboxes()
    keys = [f"reader{i}@example.org" for i in range(5000)]  # the table grows nine times
    for i, key in enumerate(keys):
        assert boxes.add(i, key, key.upper() if i % 7 == 0 else key, 10 + i) is None
    assert boxes.add(5000, keys[14], " Dup@x ", 99) == 14  # the first entry of that key
    assert len(boxes) == 5000 and boxes.keys() == keys
    assert [boxes.find(k) for k in keys] == list(range(5000))
    assert boxes.find("nobody@example.org") is None and boxes.find("") is None
    assert boxes.place(14) == (14, keys[14].upper(), 24) and boxes.place(15) == (15, keys[15], 25)
    again = pickle.loads(pickle.dumps(boxes))  # as an outline is kept for the next process
    assert again.find(keys[4321]) == 4321 and again.keys() == keys
