"""A strict line scanner for the plain YAML a subscriber file is written in: the same values and
lines as `yamlfile.read_document`, faster, from text that may come in pieces.

Reading a 100,000-subscriber file through LibYAML's events costs about 4 s of CPU here, most of
it in building one Python event object per token; this reads it line by line with one regular
expression in about 2.3 s, a piece at a time (so a caller need not hold the text).
It takes only the common subset: block mappings with identifier keys, block sequences (also
at their key's indentation), single-line plain, single- and double-quoted scalars (no escapes),
single-line flow lists and mappings, blank lines and comments, LF line ends, spaces only. On
anything else (a tab, an anchor or tag, a multi-line or block scalar, an escape, a duplicate
key, a line it cannot place) it raises `NotPlain` at once, and the caller reads the text with
the YAML parser as before: this is a shortcut, never a second definition of YAML. Tests hold
both readers to the same values, lines, items passed out and error messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from newsletter.yamlfile import (
    _PLAIN_TAGS,
    _SPECIAL,
    _STR,
    Lines,
    MapLines,
    NotPlain,
    OnItem,
    SeqLines,
    line_of,
    plain_resolvers,
    resolve_plain,
)

# One line: indentation, a sequence dash, an identifier key with its colon, and the rest.
_LINE = re.compile(r"( *)(-(?: +|(?=\n)))?(?:([A-Za-z_][A-Za-z0-9_]*):(?=[ \n]) *)?(.*)\n")
# Anything that is not a printable character, LF or space is left to the parser: tabs, CR and
# the other line breaks YAML knows, a byte-order mark, what YAML refuses.
_UNSURE = re.compile(
    "[^\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")
_FLOW_PLAIN = re.compile(r"[^\s,\[\]{}#:\"'&*!|>%@`?\-][^,\[\]{}#:\"'\n]*")
_FLOW_KEY = re.compile(r" *([A-Za-z_][A-Za-z0-9_]*): +")
_MISSING = object()
CACHE_MAX = 4096  # plain scalars whose value the resolver remembers
# A double-quoted scalar, or a flow list of them, without escapes: the text between the quotes.
_QUOTED = re.compile(r'"[^"\\]*" *')
_QUOTED_ITEM = re.compile(r'"([^"]*)"')
_QUOTED_LIST = re.compile(r'\[ *"[^"\\]*" *(?:, *"[^"\\]*" *)*\] *')


class _Resolver:
    """A plain scalar's value, as the safe loader resolves and constructs it (memoised)."""

    def __init__(self) -> None:
        self.loader = yaml.SafeLoader("")
        self.by_first, self.other = plain_resolvers(yaml.SafeLoader)
        self.cache: dict[str, Any] = {}

    def __call__(self, text: str) -> Any:
        value = self.cache.get(text, _MISSING)
        if value is _MISSING:
            if len(self.cache) > CACHE_MAX:
                self.cache.clear()
            value = self.cache[text] = self._construct(text)
        return value

    def _construct(self, text: str) -> Any:
        tag = resolve_plain(self.by_first, self.other, text)
        if tag == _STR:
            return text
        if tag in _SPECIAL or tag in _PLAIN_TAGS:
            raise NotPlain("merge or value key")
        node = yaml.ScalarNode(tag, text)
        return self.loader.yaml_constructors[tag](self.loader, node)

    def key(self, text: str) -> str:
        if self(text) != text:  # yes, on, null, ...: not a string
            raise NotPlain("a key that is not a string")
        return text


_RESOLVER = _Resolver()  # holds no state but its memo


def _flow(s: str, pos: int, line: int, resolve: _Resolver) -> tuple[Any, Lines, int]:
    """The flow value at s[pos] (on one line): its value, lines and the position after it."""
    c = s[pos]
    if c == '"':
        end = s.index('"', pos + 1)
        body = s[pos + 1 : end]
        if "\\" in body:
            raise NotPlain("an escape")
        return body, line, end + 1
    if c == "'":
        end = s.index("'", pos + 1)
        if s.startswith("'", end + 1):
            raise NotPlain("a quote in single quotes")
        return s[pos + 1 : end], line, end + 1
    if c == "[":
        items: list[Any] = []
        children: list[Lines] = []
        pos += 1
        while s[pos] == " ":
            pos += 1
        if s[pos] == "]":
            return items, SeqLines(line, children), pos + 1
        while True:
            while s[pos] == " ":
                pos += 1
            value, lines, pos = _flow(s, pos, line, resolve)
            items.append(value)
            children.append(lines)
            while s[pos] == " ":
                pos += 1
            if s[pos] == "]":
                return items, SeqLines(line, children), pos + 1
            if s[pos] != ",":
                raise NotPlain("a flow list")
            pos += 1
    if c == "{":
        data: dict[Any, Any] = {}
        mapping = MapLines(line, [], [], [])
        pos += 1
        while s[pos] == " ":
            pos += 1
        if s[pos] == "}":
            return data, mapping, pos + 1
        while True:
            m = _FLOW_KEY.match(s, pos)
            if m is None:
                raise NotPlain("a flow mapping")
            key = resolve.key(m.group(1))
            if key in data:
                raise NotPlain("a duplicate key")
            value, lines, pos = _flow(s, m.end(), line, resolve)
            data[key] = value
            mapping.keys.append(key)
            mapping.key_lines.append(line)
            mapping.children.append(lines)
            while s[pos] == " ":
                pos += 1
            if s[pos] == "}":
                return data, mapping, pos + 1
            if s[pos] != ",":
                raise NotPlain("a flow mapping")
            pos += 1
    m = _FLOW_PLAIN.match(s, pos)
    if m is None:
        raise NotPlain("a flow scalar")
    return resolve(m.group().rstrip(" ")), line, m.end()


def _value(rest: str, line: int, resolve: _Resolver) -> tuple[Any, Lines]:
    """The value written after `key: ` or `- ` (not empty, not a comment)."""
    c = rest[0]
    if c == "[" and _QUOTED_LIST.fullmatch(rest):  # the usual keyword list, read in C
        items = _QUOTED_ITEM.findall(rest)
        return items, SeqLines(line, [line] * len(items))
    if c == '"' and _QUOTED.fullmatch(rest):
        return rest[1 : rest.rindex('"')], line
    if c in "\"'[{":
        value, lines, pos = _flow(rest + "\n", 0, line, resolve)
        tail = rest[pos:]
        if tail.strip(" ") and not (tail[0] == " " and tail.lstrip(" ")[0] == "#"):
            raise NotPlain("text after a quoted or flow value")
        return value, lines
    cut = rest.find(" #")
    text = (rest if cut < 0 else rest[:cut]).rstrip(" ")
    if c in _INDICATORS or ": " in text or text.endswith(":"):
        raise NotPlain("a plain scalar the scanner leaves to the parser")
    return (resolve(text) if c in resolve.by_first or resolve.other else text), line


class _Frame:
    """An open block collection: its column, value and lines; a mapping's key awaiting a value
    on the next lines; for the streamed list, the item being read."""

    __slots__ = ("col", "data", "item", "lines", "pending", "seq", "stream")

    def __init__(self, col: int, seq: bool, data: Any, lines: Any, stream: bool = False) -> None:
        self.col, self.seq, self.data, self.lines, self.stream = col, seq, data, lines, stream
        self.pending: tuple[str, int] | None = None
        self.item: tuple[Any, Lines] | None = None


class _Scan:
    def __init__(self, stream_key: str, on_item: OnItem, resolve: _Resolver) -> None:
        self.stream_key, self.on_item = stream_key, on_item
        self.resolve = resolve
        self.stack: list[_Frame] = []
        self.root: _Frame | None = None
        self.keys: set[str] = set()  # keys known to read as strings

    def put(self, frame: _Frame, key: str, line: int, value: Any, lines: Lines) -> None:
        if key in frame.data:
            raise NotPlain("a duplicate key")
        frame.data[key] = value
        frame.lines.keys.append(key)
        frame.lines.key_lines.append(line)
        frame.lines.children.append(lines)

    def pop(self) -> None:
        frame = self.stack.pop()
        if frame.pending is not None:  # `key:` and nothing under it: null
            key, line = frame.pending
            frame.pending = None
            self.put(frame, key, line, None, line)
        if frame.stream:
            self.emit(frame)

    def emit(self, frame: _Frame) -> None:
        """The streamed list's current item is complete: hand it out."""
        if frame.item is not None:
            value, lines = frame.item
            frame.item = None
            frame.data.append(self.on_item(len(frame.data), value, lines))
            frame.lines.children.append(line_of(lines))

    def lines(self, chunk: str, lineno: int) -> int:
        """Read whole lines (`chunk` ends with LF) whose first is line `lineno` + 1."""
        if _UNSURE.search(chunk):
            raise NotPlain("a character the scanner leaves to the parser")
        resolve = self.resolve
        keys = self.keys
        # The mapping the usual line (`key: value`) goes to, kept in locals: -1 when none.
        col, data, maplines = self.usual()
        for ind_s, dash, key, rest in _LINE.findall(chunk):
            lineno += 1
            if key in keys and not dash and len(ind_s) == col and rest and rest[0] != "#":
                if key in data:
                    raise NotPlain("a duplicate key")
                data[key], vlines = _value(rest, lineno, resolve)
                maplines.keys.append(key)
                maplines.key_lines.append(lineno)
                maplines.children.append(vlines)
            elif dash or key:
                self.place(lineno, len(ind_s), dash, key, rest)
                col, data, maplines = self.usual()
            elif rest and rest[0] != "#":  # neither blank nor a comment
                raise NotPlain("a line that is neither key nor item")
        return lineno

    def usual(self) -> tuple[int, Any, Any]:
        """(column, value, lines) of the mapping the next `key: value` line may go to
        without `place` (-1: none)."""
        if not self.stack:
            return -1, None, None
        top = self.stack[-1]
        if top.seq or top.pending is not None or top is self.root:
            return -1, None, None
        return top.col, top.data, top.lines

    def place(self, lineno: int, ind: int, dash: str, key: str, rest: str) -> None:
        """Any other key or item line: open and close collections around it."""
        stack = self.stack
        resolve = self.resolve
        root = self.root
        if not stack:
            if root is not None or dash or ind:
                raise NotPlain("the document is not one block mapping")
            root = self.root = _Frame(0, False, {}, MapLines(lineno, [], [], []))
            stack.append(root)
        top = stack[-1]
        if top.pending is not None:  # the line after `key:`: its value, or a null
            pkey, pline = top.pending
            top.pending = None
            if ind > top.col or (ind == top.col and dash):
                new = _Frame(ind, bool(dash), [] if dash else {}, None)
                new.lines = SeqLines(lineno, []) if dash else MapLines(lineno, [], [], [])
                new.stream = top is root and pkey == self.stream_key and bool(dash)
                self.put(top, pkey, pline, new.data, new.lines)
                stack.append(new)
                top = new
            else:
                self.put(top, pkey, pline, None, pline)
        while top.col > ind or (top.col == ind and top.seq and not dash):
            self.pop()
            if not stack:
                raise NotPlain("a line outside the document")
            top = stack[-1]
        if top.col != ind or top.seq != bool(dash):
            raise NotPlain("a line at an indentation the scanner cannot place")
        if dash:
            if top.stream:
                self.emit(top)
            if not key:
                if not rest or rest[0] == "#":
                    raise NotPlain("an empty item")
                value, vlines = _value(rest, lineno, resolve)
                if top.stream:
                    top.item = (value, vlines)
                else:
                    top.data.append(value)
                    top.lines.children.append(vlines)
                return
            item = _Frame(ind + len(dash), False, {}, MapLines(lineno, [], [], []))
            if top.stream:
                top.item = (item.data, item.lines)
            else:
                top.data.append(item.data)
                top.lines.children.append(item.lines)
            stack.append(item)
            top = item
        if key not in self.keys:
            resolve.key(key)
            self.keys.add(key)
        if key in top.data:
            raise NotPlain("a duplicate key")
        if not rest or rest[0] == "#":
            top.pending = (key, lineno)
            return
        if top is root and key == self.stream_key and rest[0] in "[{":
            raise NotPlain("the streamed list written inline")
        value, vlines = _value(rest, lineno, resolve)
        self.put(top, key, lineno, value, vlines)

    def end(self) -> tuple[Any, Lines]:
        while self.stack:
            self.pop()
        if self.root is None:
            raise NotPlain("an empty document")
        return self.root.data, self.root.lines


def scan_document(
    chunks: Iterable[str], stream_key: str, on_item: OnItem
) -> tuple[Any, Lines | None]:
    """What `yamlfile.read_document(text, ..., stream_key, on_item)` gives for the text made of
    `chunks` (each ending at a line end, but for the last), or NotPlain, possibly after some
    items went to `on_item`. Only the pieces read so far are held."""
    scan = _Scan(stream_key, on_item, _RESOLVER)
    lineno = 0
    try:
        for chunk in chunks:
            if chunk and not chunk.endswith("\n"):
                chunk += "\n"
            lineno = scan.lines(chunk, lineno)
        return scan.end()
    except (IndexError, ValueError) as exc:  # a quote or bracket not closed on its line
        raise NotPlain(f"a line the scanner cannot read ({exc})") from None
