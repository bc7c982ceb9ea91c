"""Every subscriber's mailbox (its address_key) in under 100 bytes, not a dict entry of about
250: what finds duplicates in a check and a subscriber by address in a send.

The keys sit as UTF-8 in one bytearray, with their offsets in arrays, and a hash table of
entry numbers (open addressing, in an array) finds them. The hash is Python's, which differs
from one process to the next: a pickled copy (an outline kept for other processes) leaves the
table out and builds it again. Every hit is compared with the key itself, so a collision costs
a comparison, never a wrong answer. Nothing is built per subscriber but bytes in arrays, so the
table grows without a transient copy of the keys. Pure: no I/O.
"""

from __future__ import annotations

from array import array
from typing import Any


class Mailboxes:
    """The distinct mailboxes of a file's subscribers, in the order first added, each with its
    subscriber's index, the email as written (kept when it differs from the key: messages
    quote it) and the line of the email."""

    __slots__ = ("bounds", "hashes", "index", "lines", "slots", "text")

    def __init__(self) -> None:
        self.text = bytearray()
        # entry j: key text[bounds[2j]:bounds[2j+1]], email as written up to bounds[2j+2]
        # (nothing there when written as its key)
        self.bounds: array[int] = array("q", [0])
        self.index: array[int] = array("I")  # entry j's subscriber index
        self.lines: array[int] = array("I")  # entry j's email line
        self.hashes: array[int] = array("q")  # entry j's hash
        self.slots: array[int] = array("I", bytes(4 * 16))  # entry number + 1, or 0: free

    def __len__(self) -> int:
        return len(self.index)

    def add(self, i: int, key: str, written: str, line: int) -> int | None:
        """Add subscriber #i+1's mailbox; if an earlier subscriber has it, that entry's number
        instead (nothing is added)."""
        encoded = key.encode("utf-8", "surrogatepass")
        wanted = hash(encoded)
        at = self._probe(wanted, encoded)
        if self.slots[at]:
            return int(self.slots[at]) - 1
        self.slots[at] = len(self.index) + 1
        self.text += encoded
        self.bounds.append(len(self.text))
        if written != key:
            self.text += written.encode("utf-8", "surrogatepass")
        self.bounds.append(len(self.text))
        self.index.append(i)
        self.lines.append(line)
        self.hashes.append(wanted)
        if 2 * len(self.index) > len(self.slots):  # at most half full: probes stay short
            self._grow()
        return None

    def _probe(self, wanted: int, encoded: bytes) -> int:
        """The slot of the entry with this key, or the free slot where it would go."""
        slots, hashes, bounds, text = self.slots, self.hashes, self.bounds, self.text
        mask = len(slots) - 1
        at = wanted & mask
        while j := slots[at]:
            j -= 1
            if hashes[j] == wanted and text[bounds[2 * j] : bounds[2 * j + 1]] == encoded:
                break
            at = (at + 1) & mask
        return at

    def __getstate__(self) -> tuple[Any, ...]:
        return self.text, self.bounds, self.index, self.lines

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.text, self.bounds, self.index, self.lines = state
        text, bounds = self.text, self.bounds
        self.hashes = array(
            "q", (hash(bytes(text[bounds[2 * j] : bounds[2 * j + 1]])) for j in range(len(self)))
        )
        self.slots = array("I", bytes(4 * 8))
        self._grow()

    def _grow(self) -> None:
        """Twice the slots (at least twice the entries), every entry placed again."""
        size = len(self.slots)
        while size < 4 * len(self.index):
            size *= 2
        slots = self.slots = array("I", bytes(4 * size))
        mask = len(slots) - 1
        for j, wanted in enumerate(self.hashes):
            at = wanted & mask
            while slots[at]:
                at = (at + 1) & mask
            slots[at] = j + 1

    def place(self, j: int) -> tuple[int, str, int]:
        """Entry j's subscriber index, email as written and line of the email."""
        return int(self.index[j]), self.written(j), int(self.lines[j])

    def key(self, j: int) -> str:
        return self._text(2 * j)

    def written(self, j: int) -> str:
        """Entry j's email as written."""
        return self._text(2 * j + 1) or self.key(j)

    def _text(self, at: int) -> str:
        return self.text[self.bounds[at] : self.bounds[at + 1]].decode("utf-8", "surrogatepass")

    def find(self, key: str) -> int | None:
        """The index of the subscriber with this mailbox, if any."""
        encoded = key.encode("utf-8", "surrogatepass")
        j = self.slots[self._probe(hash(encoded), encoded)]
        return None if not j else int(self.index[j - 1])

    def keys(self) -> list[str]:
        """Every mailbox, in the order added."""
        return [self.key(j) for j in range(len(self))]
