"""The subscriber file for a run over all of it (`send`), read again a chunk at a time, so the
run never holds every subscriber (only their address index and places: about 85 bytes each).

The whole file is checked first, every problem reported at once as `load_subscribers` does,
before anything is sent; meanwhile it is copied, as read, into an anonymous temporary file (an
edit during a long send changes nothing, and nothing is left behind, even after SIGKILL). A
`Roster` keeps the copy, each subscriber's place in it and the address keys; its items and
slices are read from the copy when asked for. A file the scanner does not read (anchors, say)
is loaded whole, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import stat
import sys
import tempfile
import weakref
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, overload

import pydantic
import yaml

from newsletter import addresses as addresses_module
from newsletter import mailboxes, models, subscribers, yamlfile, yamlscan
from newsletter.addresses import address_key
from newsletter.models import Subscriber
from newsletter.subscribers import (
    PIECE,
    SHARED_LIMIT,
    Outline,
    Shared,
    load_subscribers,
    outline_subscribers,
    read_chunk,
    reading,
)

CHUNK = 256  # subscribers read at a time when iterating


class Roster(Sequence[Subscriber]):
    """A checked subscriber file, its subscribers read from a private copy when asked for."""

    def __init__(self, source: str, copy: IO[bytes], outline: Outline) -> None:
        self.source, self.copy, self.outline = source, copy, outline
        self._closer = weakref.finalize(self, copy.close)  # the copy goes with the roster
        self.offsets, self.end = _offsets(copy, outline.lines, outline.end)
        self.shared = Shared(SHARED_LIMIT)  # equal topics of the chunks read as one object

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, index: int) -> Subscriber: ...

    @overload
    def __getitem__(self, index: slice) -> list[Subscriber]: ...

    def __getitem__(self, index: int | slice) -> Subscriber | list[Subscriber]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self.read(start, stop)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.read(index, index + 1)[0]

    def __iter__(self) -> Iterator[Subscriber]:
        for start in range(0, len(self), CHUNK):
            yield from self.read(start, min(len(self), start + CHUNK))

    def read(self, start: int, stop: int) -> list[Subscriber]:
        """Subscribers #start+1 to #stop (one read of the copy)."""
        if start >= stop:
            return []
        begin = self.offsets[start]
        end = self.offsets[stop] if stop < len(self) else self.end
        text = os.pread(self.copy.fileno(), end - begin, begin).decode("utf-8")
        lines = self.outline.lines[start:stop]
        return read_chunk(text, self.source, self.outline.defaults, lines, self.shared)

    def close(self) -> None:
        self._closer()

    def keys(self) -> list[str]:
        """Every subscriber's address_key, in file order."""
        return self.outline.mailboxes.keys()

    def pick(self, keys: Sequence[str]) -> list[Subscriber]:
        """The subscribers with these address_keys (all present), in that order: one read per
        run of neighbours in the file, not one per subscriber."""
        indices: list[int] = []
        for key in keys:
            index = self.outline.index(key)
            if index is None:
                raise KeyError(key)
            indices.append(index)
        wanted = sorted(set(indices))
        found: dict[int, Subscriber] = {}
        run_start = 0
        for n in range(1, len(wanted) + 1):
            if n == len(wanted) or wanted[n] != wanted[n - 1] + 1:
                first, last = wanted[run_start], wanted[n - 1]
                found.update(zip(range(first, last + 1), self.read(first, last + 1), strict=True))
                run_start = n
        return [found[i] for i in indices]

    def get(self, key: str) -> Subscriber | None:
        """The subscriber with this address_key, if any."""
        index = self.outline.index(key)
        return None if index is None else self[index]


class ByAddress(Mapping[str, Subscriber]):
    """A roster's subscribers by address_key, each read when looked up."""

    def __init__(self, roster: Roster) -> None:
        self.roster = roster

    def __getitem__(self, key: str) -> Subscriber:
        found = self.roster.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.roster.outline.index(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.roster.keys())

    def __len__(self) -> int:
        return len(self.roster)


def by_address(subscribers: Sequence[Subscriber]) -> Mapping[str, Subscriber]:
    """The subscribers by address_key (the first of any one mailbox)."""
    if isinstance(subscribers, Roster):
        return ByAddress(subscribers)
    found: dict[str, Subscriber] = {}
    for s in subscribers:
        found.setdefault(address_key(s.email), s)
    return found


def pick(by_key: Mapping[str, Subscriber], keys: Sequence[str]) -> list[Subscriber]:
    """The subscribers of these address_keys (each present in `by_key`), in that order."""
    if isinstance(by_key, ByAddress):
        return by_key.roster.pick(keys)
    return [by_key[address_key(k)] for k in keys]


def addresses(subscribers: Sequence[Subscriber]) -> list[str]:
    """Every subscriber's address (a roster's without reading the subscribers)."""
    if isinstance(subscribers, Roster):
        return subscribers.keys()
    return [s.email for s in subscribers]


def load_roster(path: Path) -> Sequence[Subscriber]:
    """The checked subscriber file (SubscriberConfigError listing every problem): a Roster, or
    when the scanner does not read the file, the list of its subscribers.

    A file checked before by this code on this host (same bytes) is not checked again: its
    outline is kept under the checker's own hash, so the senders of one edition, or the same
    file sent day after day, pay for the check once."""
    copy = tempfile.TemporaryFile()  # noqa: SIM115 (the roster keeps it open)
    try:
        with reading(path):
            digest = _copy(path, copy)
        outline = _kept_outline(digest)
        if outline is not None:
            return Roster(str(path), copy, outline)

        def pieces() -> Iterator[str]:
            copy.seek(0)
            while lines := copy.readlines(PIECE):
                yield b"".join(lines).decode("utf-8")

        with reading(path):
            outline = outline_subscribers(pieces, str(path))
        if not outline.scanned:
            copy.close()
            return load_subscribers(path)
        _keep_outline(digest, outline)
        return Roster(str(path), copy, outline)
    except BaseException:
        copy.close()
        raise


def _copy(path: Path, copy: IO[bytes]) -> str:
    """Copy the file, as read, into `copy`; the hash of its bytes and of the checking code."""
    digest = hashlib.sha256(_CHECKER)
    with path.open("rb") as file:
        while piece := file.read(PIECE):
            copy.write(piece)
            digest.update(piece)
    copy.flush()
    return digest.hexdigest()


def _checker() -> bytes:
    """What a check's outcome depends on besides the file: the checking code and libraries."""
    sources = [Path(m.__file__ or "").read_bytes() for m in _CHECKING]
    versions = f"{sys.version}\0{pydantic.VERSION}\0{yaml.__version__}".encode()
    return hashlib.sha256(b"\0".join([versions, *sources])).digest()


_CHECKING = (
    addresses_module,
    mailboxes,
    models,
    subscribers,
    yamlfile,
    yamlscan,
    sys.modules[__name__],
)
_CHECKER = _checker()
KEEP_OUTLINES = 8  # files whose outlines are kept (the newest)


def _outline_folder() -> Path | None:
    """This user's folder of kept outlines; None unless only this user can write to it."""
    folder = Path(tempfile.gettempdir()) / f"newsletter-rosters-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    private = st.st_uid == os.getuid() and not st.st_mode & 0o077
    return folder if private and stat.S_ISDIR(st.st_mode) else None


def _kept_outline(digest: str) -> Outline | None:
    folder = _outline_folder()
    if folder is None:
        return None
    try:
        with (folder / f"{digest}.outline").open("rb") as file:
            kept = pickle.load(file)
    except Exception:  # none kept, or unreadable: check the file
        return None
    return kept if isinstance(kept, Outline) else None


def _keep_outline(digest: str, outline: Outline) -> None:
    folder = _outline_folder()
    if folder is None:
        return
    with contextlib.suppress(OSError):
        part = folder / f"{digest}.{os.getpid()}.part"
        with part.open("wb") as file:  # written as pickled, not built whole first
            pickle.dump(outline, file, pickle.HIGHEST_PROTOCOL)
        os.replace(part, folder / f"{digest}.outline")  # whole or not at all
        kept = sorted(folder.glob("*.outline"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP_OUTLINES:]:
            old.unlink()


def _offsets(copy: IO[bytes], lines: Sequence[int], end_line: int | None) -> tuple[array[int], int]:
    """The byte offset of each subscriber's first line in the copy, and where the list ends."""
    offsets: array[int] = array("q")
    wanted = iter(lines)
    nxt = next(wanted, 0)
    pos = 0
    copy.seek(0)
    for lineno, line in enumerate(copy, 1):
        if lineno == nxt:
            offsets.append(pos)
            nxt = next(wanted, 0)
        elif lineno == end_line:
            break
        pos += len(line)
    return offsets, pos
