"""Every subscriber's mailbox (its address_key) in a few dozen bytes, not a dict entry of about
250: what finds duplicates in a check and a subscriber by address in a send.

The keys sit as UTF-8 in one bytearray, with their offsets in arrays. Lookups go through the
keys' 64-bit hashes, sorted once the file is read (blake2b, the same in every process, as an
outline kept for other processes needs); every hit is compared with the key itself, so a
collision costs a comparison, never a wrong answer. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from itertools import groupby


def _hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class Mailboxes:
    """The mailboxes of a file's subscribers, each added with its subscriber's index, the
    email as written (kept when it differs from the key: messages quote it) and its line."""

    __slots__ = ("bounds", "hashes", "index", "lines", "order", "text")

    def __init__(self) -> None:
        self.text = bytearray()
        # entry j: key text[bounds[2j]:bounds[2j+1]], email as written up to bounds[2j+2]
        # (nothing there when written as its key)
        self.bounds: array[int] = array("q", [0])
        self.index: array[int] = array("I")  # entry j's subscriber index
        self.lines: array[int] = array("I")  # entry j's email line
        self.hashes: array[int] = array("Q")  # entry j's hash; sorted by `seal`
        self.order: array[int] = array("I")  # after `seal`: entries in hash order

    def __len__(self) -> int:
        return len(self.index)

    def add(self, i: int, key: str, written: str, line: int) -> None:
        encoded = key.encode("utf-8", "surrogatepass")
        self.text += encoded
        self.bounds.append(len(self.text))
        if written != key:
            self.text += written.encode("utf-8", "surrogatepass")
        self.bounds.append(len(self.text))
        self.index.append(i)
        self.lines.append(line)
        self.hashes.append(_hash(encoded))

    def key(self, j: int) -> str:
        return self._text(2 * j)

    def written(self, j: int) -> str:
        """Entry j's email as written."""
        return self._text(2 * j + 1) or self.key(j)

    def _text(self, at: int) -> str:
        return self.text[self.bounds[at] : self.bounds[at + 1]].decode("utf-8", "surrogatepass")

    def seal(self) -> list[list[int]]:
        """Sort the hashes for lookups; the entries of each mailbox added more than once (each
        group in the order added)."""
        hashes = self.hashes
        order = sorted(range(len(hashes)), key=hashes.__getitem__)  # stable: entry order
        self.order = array("I", order)
        self.hashes = array("Q", (hashes[j] for j in order))
        repeated: list[list[int]] = []
        for _, same_hash in groupby(order, key=hashes.__getitem__):
            group = list(same_hash)
            if len(group) > 1:  # the same key, or (rarely) a collision: tell them apart
                by_key: dict[str, list[int]] = {}
                for j in group:
                    by_key.setdefault(self.key(j), []).append(j)
                repeated += [js for js in by_key.values() if len(js) > 1]
        return sorted(repeated)

    def find(self, key: str) -> int | None:
        """The subscriber index of the first entry with this key (after `seal`), if any."""
        encoded = key.encode("utf-8", "surrogatepass")
        wanted = _hash(encoded)
        at = bisect_left(self.hashes, wanted)
        while at < len(self.hashes) and self.hashes[at] == wanted:
            j = self.order[at]
            if self.key(j) == key:
                return int(self.index[j])
            at += 1
        return None

    def keys(self) -> list[str]:
        """Every entry's key, in the order added."""
        return [self.key(j) for j in range(len(self))]
