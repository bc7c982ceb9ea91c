"""One pass over a YAML document: plain Python values, the line of every key and item, and the
items of one top-level list handed out as they are read.

PyYAML's loaders build a tree of nodes (with two position marks each) for the whole document
before constructing a value; a 100,000-entry file costs gigabytes that way. `read_document`
builds the values straight from the parser's events, with LibYAML's C parser when PyYAML has it
(`yaml.CSafeLoader`, else the pure-Python `yaml.SafeLoader`), and keeps, beside the values, a
`Lines` tree: the line of each mapping, sequence and scalar and of each mapping key, enough to
point an error at the right line as a node tree would. The items of `stream_key`'s list go to a
callback one at a time, so the caller can check each and drop it.

Plain YAML takes that path: what `yaml.safe_load` gives, with the same values and key order.
A document with anchors, aliases, explicit tags, merge keys (`<<`), keys that are not scalars or
a key twice raises `NotPlain`; `read_document_nodes` reads it the general way (a node tree,
then `construct_document`), as before, and reports a key written twice in one mapping as an error
at its line. Both are pure: text in, values out.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)
PureLoader = yaml.SafeLoader

_STR = "tag:yaml.org,2002:str"
_PLAIN_TAGS = (None, "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_SPECIAL = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")


class NotPlain(Exception):
    """The document needs the general reader (anchors, aliases, tags, merge keys, ...)."""


@dataclass(slots=True)
class MapLines:
    """A mapping's line and, per key in document order, the key as written, its line and the
    lines of its value."""

    line: int
    keys: list[Any]
    key_lines: list[int]
    children: list[Lines]


@dataclass(slots=True)
class SeqLines:
    """A sequence's line and the lines of its items."""

    line: int
    children: list[Lines]


Lines = int | MapLines | SeqLines  # a scalar is just its line
OnItem = Callable[[int, Any, "Lines"], Any]


def line_of(lines: Lines) -> int:
    return lines if isinstance(lines, int) else lines.line


def event_line(event: Any) -> int:
    line: int = event.start_mark.line + 1
    return line


def walk(lines: Lines | None, path: Sequence[Any], line: int = 1) -> tuple[Lines | None, int]:
    """Follow `path` (keys and list indexes) down from `lines`: the node reached (None once the
    path leaves the document) and the line of the deepest key or item found on the way."""
    node = lines
    for part in path:
        if node is None:
            break
        line = line_of(node)
        nxt: Lines | None = None
        if isinstance(node, MapLines):
            for key, key_line, child in zip(node.keys, node.key_lines, node.children, strict=True):
                if key == part:
                    line, nxt = key_line, child
                    break
        elif isinstance(node, SeqLines) and isinstance(part, int) and part < len(node.children):
            nxt = node.children[part]
            line = line_of(nxt)
        node = nxt
    return node, line


Resolvers = list[tuple[str, Any]]


def plain_resolvers(loader: Any) -> tuple[dict[str, Resolvers], Resolvers | None]:
    """The implicit resolvers a plain scalar's first character calls for, and those for any
    other first character (None: such a scalar is a string)."""
    resolvers: dict[Any, Resolvers] = loader.yaml_implicit_resolvers
    wildcard = resolvers.get(None, [])
    return {c: rs + wildcard for c, rs in resolvers.items() if c is not None}, wildcard or None


def resolve_plain(by_first: dict[str, Resolvers], other: Resolvers | None, text: str) -> str:
    """The tag the safe loader gives the plain scalar `text` (see `plain_resolvers`)."""
    for tag, regexp in by_first.get(text[:1], other) or ():
        if regexp.match(text):
            return str(tag)
    return _STR


class _Reader:
    """Values and lines from the events of one loader (C or pure-Python parser)."""

    def __init__(self, loader: Any, stream_key: str, on_item: OnItem) -> None:
        self.get_event: Callable[[], Any] = loader.get_event
        self.check_event: Callable[..., bool] = loader.check_event
        self.loader = loader
        self.by_first, self.other = plain_resolvers(loader)
        if loader.yaml_path_resolvers:
            raise NotPlain("path resolvers")
        self.stream_key = stream_key
        self.on_item = on_item

    def document(self) -> tuple[Any, Lines | None]:
        get = self.get_event
        get()  # stream start
        if self.check_event(StreamEndEvent):
            return None, None
        start = get()  # document start
        data, lines = self.value(get(), root=True)
        get()  # document end
        if not self.check_event(StreamEndEvent):
            event = get()
            raise yaml.composer.ComposerError(
                "expected a single document in the stream",
                start.start_mark,
                "but found another document",
                event.start_mark,
            )
        return data, lines

    def value(self, event: Any, root: bool = False) -> tuple[Any, Lines]:
        kind = type(event)
        if kind is AliasEvent or event.anchor is not None:
            raise NotPlain("anchor or alias")
        if kind is ScalarEvent:
            return self.scalar(event), event.start_mark.line + 1
        if event.tag not in _PLAIN_TAGS:
            raise NotPlain("tagged collection")
        if kind is SequenceStartEvent:
            return self.sequence(event)
        return self.mapping(event, root)

    def scalar(self, event: Any) -> Any:
        if event.tag is not None:
            raise NotPlain("tagged scalar")
        text: str = event.value
        if not event.implicit[0]:  # quoted: always a string
            return text
        tag = resolve_plain(self.by_first, self.other, text)
        if tag == _STR:
            return text
        if tag in _SPECIAL:
            raise NotPlain("merge or value key")
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
        return construct_scalar(self.loader, node)

    def sequence(self, start: Any) -> tuple[list[Any], SeqLines]:
        data: list[Any] = []
        children: list[Lines] = []
        get = self.get_event
        while True:
            event = get()
            kind = type(event)
            if kind is SequenceEndEvent:
                return data, SeqLines(start.start_mark.line + 1, children)
            if kind is ScalarEvent and event.anchor is None:
                data.append(self.scalar(event))
                children.append(event_line(event))
            else:
                item, lines = self.value(event)
                data.append(item)
                children.append(lines)

    def mapping(self, start: Any, root: bool) -> tuple[dict[Any, Any], MapLines]:
        data: dict[Any, Any] = {}
        lines = MapLines(start.start_mark.line + 1, [], [], [])
        get = self.get_event
        while True:
            event = get()
            kind = type(event)
            if kind is MappingEndEvent:
                return data, lines
            if kind is not ScalarEvent or event.anchor is not None:
                raise NotPlain("complex key, anchor or alias")
            key = self.scalar(event)
            if key in data:
                raise NotPlain("a duplicate key")
            value = get()
            if root and key == self.stream_key and event.value == self.stream_key:
                data[key], child = self.streamed(value)
            elif type(value) is ScalarEvent and value.anchor is None:
                data[key], child = self.scalar(value), event_line(value)
            else:
                data[key], child = self.value(value)
            lines.keys.append(event.value)
            lines.key_lines.append(event.start_mark.line + 1)
            lines.children.append(child)

    def streamed(self, start: Any) -> tuple[Any, Lines]:
        """The list under `stream_key`: each item goes to `on_item`, whose answers make the
        list; the lines kept are each item's own (its inner lines went to `on_item`)."""
        if type(start) is not SequenceStartEvent:
            return self.value(start)
        if start.anchor is not None or start.tag not in _PLAIN_TAGS:
            raise NotPlain("anchored or tagged list")
        answers: list[Any] = []
        children: list[Lines] = []
        mark: Any = start.start_mark
        get = self.get_event
        while True:
            event = get()
            if type(event) is SequenceEndEvent:
                return answers, SeqLines(mark.line + 1, children)
            item, lines = self.value(event)
            answers.append(self.on_item(len(answers), item, lines))
            children.append(line_of(lines))


def read_document(
    text: str, loader_class: type[Any], stream_key: str, on_item: OnItem
) -> tuple[Any, Lines | None]:
    """The document's value and lines, `stream_key`'s items passed to `on_item` as they come
    (its list holds on_item's answers). Raises yaml.YAMLError, or NotPlain (see the module)."""
    loader = loader_class(text)
    try:
        return _Reader(loader, stream_key, on_item).document()
    finally:
        loader.dispose()


def read_document_nodes(text: str, loader_class: type[Any]) -> tuple[Any, Lines | None]:
    """Any YAML document the safe loader accepts: its value and lines, from a node tree."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_scalars(loader, node, set())  # a bad date is reported at its line, not raised
        # Constructing flattens merge keys in place; the lines are those of the text as written.
        return loader.construct_document(copy.deepcopy(node)), _node_lines(node, {})
    finally:
        loader.dispose()


def construct_scalar(loader: Any, node: yaml.ScalarNode) -> Any:
    """The value of a plain scalar the loader resolved to `node.tag`; one that only looks like
    a date or number (`2026-13-45`) is a YAML error at its line, not a crash."""
    try:
        return loader.yaml_constructors[node.tag](loader, node)
    except (ValueError, OverflowError) as exc:
        kind = node.tag.rsplit(":", 1)[-1]
        kind = {"timestamp": "date"}.get(kind, kind)
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{node.value!r} reads as a {kind} but is not one ({exc}); "
            "put it in quotes to keep it as text",
            node.start_mark,
        ) from None


def _check_scalars(loader: Any, node: yaml.Node, seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.tag in loader.yaml_constructors and node.tag != _STR:
            construct_scalar(loader, node)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            _check_scalars(loader, key, seen)
            _check_scalars(loader, value, seen)
            if isinstance(key, yaml.ScalarNode) and key.tag not in _SPECIAL:
                # YAML forbids it and the loader would keep the last one silently: a second
                # `subscribers:` or `topics:` would drop what the first one says
                was = first.setdefault((key.tag, key.value), key)
                if was is not key:
                    lines = sorted({was.start_mark.line + 1, key.start_mark.line + 1})
                    where = " and ".join(map(str, lines))
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {key.value!r} is written twice in one mapping (line"
                        f"{'s' if len(lines) > 1 else ''} {where}); keep one",
                        key.start_mark,
                    )
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_scalars(loader, item, seen)


def _node_lines(node: yaml.Node, seen: dict[int, Lines]) -> Lines:
    if id(node) in seen:  # an alias: the lines of the node it names
        return seen[id(node)]
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        mapping = MapLines(line, [], [], [])
        seen[id(node)] = mapping
        for key, value in node.value:
            mapping.keys.append(key.value if isinstance(key, yaml.ScalarNode) else None)
            mapping.key_lines.append(key.start_mark.line + 1)
            mapping.children.append(_node_lines(value, seen))
        return mapping
    if isinstance(node, yaml.SequenceNode):
        sequence = SeqLines(line, [])
        seen[id(node)] = sequence
        sequence.children.extend(_node_lines(item, seen) for item in node.value)
        return sequence
    seen[id(node)] = line
    return line
