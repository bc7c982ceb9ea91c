"""Hand-assembled MIME for the digest: headers, quoted-printable bodies, unsubscribe, DKIM.

The stdlib `email` package takes several ms to serialise a 70 KB message; building the bytes
directly (one C-level `binascii.b2a_qp` per part) costs a fraction of that and is fully
deterministic, so a resend of the same (edition, subscriber) yields the same bytes. The result
is checked against `email.message_from_bytes(raw, policy=email.policy.default)` in the tests.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

import dkim  # type: ignore[import-untyped]

from newsletter.addresses import address_key, check_address
from newsletter.errors import ConfigError
from newsletter.settings import Settings

CRLF = "\r\n"
# Headers the DKIM signature covers; listed-but-absent ones are signed as absent (RFC 6376 5.4)
# so nobody can add e.g. List-Unsubscribe-Post after signing.
DKIM_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)

# C0/C1 controls, DEL and Unicode line/paragraph separators: never allowed to reach a header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"\s+")
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")  # a phrase that needs no quoting
# 39 bytes -> 52 base64 chars -> a 64-char encoded-word: fits the 75-char limit of RFC 2047
# and, after "Subject: " or "Reply-To: ", the 78-column line limit of RFC 5322.
_EW_BYTES = 39


def clean_header_text(value: str) -> str:
    """Fold CR/LF, tabs and other control characters to single spaces (no header injection)."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 B-encoded words of at most 72 chars, never splitting a UTF-8 sequence."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > _EW_BYTES:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    if chunk:
        words.append("".join(chunk))
    return [
        "=?utf-8?b?" + base64.b64encode(w.encode("utf-8")).decode("ascii") + "?=" for w in words
    ]


def _needs_encoding(word: str) -> bool:
    return not word.isascii() or "=?" in word or len(word) > 70


def _fold(tokens: list[str], used: int) -> str:
    """Join tokens with spaces, starting a continuation line before 78 columns are passed."""
    lines: list[str] = []
    line = ""
    for tok in tokens:
        if line and used + len(line) + 1 + len(tok) > 78:
            lines.append(line)
            line, used = tok, 1  # continuation lines start with one space
        else:
            line = f"{line} {tok}" if line else tok
    lines.append(line)
    return (CRLF + " ").join(lines)


def encode_unstructured(value: str, name: str) -> str:
    """An unstructured header value (Subject): ASCII words kept, non-ASCII runs RFC 2047-encoded."""
    words = clean_header_text(value).split(" ")
    tokens: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:
        if word and _needs_encoding(word):
            run.append(word)
            continue
        if run:  # the spaces inside a run are encoded, so adjacent encoded-words decode right
            tokens.extend(_encoded_words(" ".join(run)))
            run = []
        if word:
            tokens.append(word)
    return _fold(tokens, len(name) + 2)


def phrase_tokens(value: str) -> list[str]:
    """A display name as foldable tokens: atoms, a quoted-string split at its spaces, or
    RFC 2047 encoded-words (non-ASCII text, or a word too long for one line)."""
    value = clean_header_text(value)
    words = value.split(" ")
    if not value.isascii() or "=?" in value or any(len(w) > 70 for w in words):
        return _encoded_words(value)
    if _ATEXT.fullmatch(value):
        return words
    return ('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"').split(" ")


def encode_phrase(value: str) -> str:
    """A display name: an atom sequence, a quoted-string, or encoded-words when non-ASCII."""
    return " ".join(phrase_tokens(value))


def format_address(name: str, address: str, header: str = "To") -> str:
    """`name <address>` folded under 78 columns after `header: ` (RFC 5322 2.2.3): a name of
    any length never makes a line a server refuses ("500 Line too long")."""
    addr = check_address(address)
    phrase = phrase_tokens(name) if name.strip() else []
    return _fold([*phrase, f"<{addr}>"], len(header) + 2) if phrase else addr


def message_id(edition: dt.date, email: str, domain: str) -> str:
    """Deterministic per (edition, subscriber), so a resend of the same digest is recognisable."""
    key = f"{edition.isoformat()}\0{address_key(email)}".encode()
    digest = hashlib.blake2s(key, digest_size=10).hexdigest()
    return f"<digest.{edition.isoformat()}.{digest}@{domain}>"


def unsubscribe_mailto(address: str) -> str:
    return f"mailto:{address}?subject=unsubscribe"


@lru_cache(maxsize=8192)
def _qp_line(line: str) -> tuple[bytes, bytes]:
    """The line quoted-printable, and that as DATA carries it (dot-stuffed, RFC 5321 4.5.2)."""
    # b2a_qp keeps the input's line-ending style, so the CRLF here gives CRLF soft breaks too.
    qp = binascii.b2a_qp((line + CRLF).encode("utf-8"), istext=True)
    return qp, dot_stuffed(qp)


def crlf_lines(data: bytes) -> bool:
    """Whether `data` is whole lines that each end in CRLF (no bare CR or LF)."""
    crlf = data.count(b"\r\n")
    return data.endswith(b"\r\n") and data.count(b"\n") == crlf and data.count(b"\r") == crlf


def dot_stuffed(lines: bytes) -> bytes:
    """Whole CRLF lines with one more "." before each line that starts with one (RFC 5321
    4.5.2), as DATA carries them."""
    return (b"." + lines if lines.startswith(b".") else lines).replace(b"\r\n.", b"\r\n..")


_QP, _WIRE = itemgetter(0), itemgetter(1)  # of a _qp_line pair, in C rather than a genexpr


def _qp_pairs(body: str) -> list[tuple[bytes, bytes]]:
    """Quoted-printable with CRLF lines, encoded line by line.

    QP is line-local, so encoding each line alone gives the same bytes as encoding the whole
    body; most lines (template boilerplate, a paper's block) repeat across subscribers, so the
    cache turns the dominant cost of building a message into dictionary lookups. Each piece
    is whole lines, so stuffing the pieces one by one stuffs the whole body.
    """
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    lines = body.split("\n")
    if lines[-1] == "":
        lines.pop()
    return list(map(_qp_line, lines))


class EncodedBody(NamedTuple):
    """A body quoted-printable line by line, as `_qp_pairs` encodes it, and its size."""

    qp: list[bytes]  # the encoded lines, in pieces (each piece whole lines)
    wire: list[bytes]  # the same, dot-stuffed
    size: int  # the body's length in UTF-8, as written (before encoding)


@lru_cache(maxsize=1024)  # the template's text and the day's paper blocks (their views)
def _chunk(chunk: str) -> tuple[int, str, bytes, bytes, str] | None:
    """A piece of a body that holds a line break, as the template yields it: (its UTF-8 size,
    the text before its first break, the whole lines after that encoded and stuffed, the text
    after its last break); None when it holds a CR (the joined body is encoded instead). The
    template's own text and its cached loop bodies recur in every digest."""
    if "\r" in chunk:
        return None
    first, _, rest = chunk.partition("\n")
    middle, inner, last = rest.rpartition("\n")
    pairs = _qp_pairs(middle + inner)  # the whole lines between the first and last break
    qp = b"".join(map(_QP, pairs))
    # whole lines: stuffed together as one by one; mostly nothing to stuff (the same object)
    return len(chunk.encode("utf-8")), first, qp, dot_stuffed(qp), last


def encode_chunks(chunks: Iterable[str]) -> EncodedBody | None:
    """`_qp_pairs` of the joined chunks, and their UTF-8 size, without joining them: each
    piece's whole lines come from the cache, and only the lines that span pieces are encoded
    (through the line cache). None when a piece holds a CR: encode the joined body."""
    qp: list[bytes] = []
    wire: list[bytes] = []
    size = 0
    pending: list[str] = []  # the current line, so far
    for chunk in chunks:
        if "\n" not in chunk:  # a value, mostly: no line of its own, nothing worth caching
            if "\r" in chunk:
                return None
            size += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8"))
            pending.append(chunk)
            continue
        parts = _chunk(chunk)
        if parts is None:
            return None
        n, first, middle_qp, middle_wire, last = parts
        size += n
        pending.append(first)
        line_qp, line_wire = _qp_line("".join(pending))
        qp += (line_qp, middle_qp)
        wire += (line_wire, middle_wire)
        pending = [last]
    if any(pending):  # a last line without a break gets one, as in `_qp_pairs`
        line_qp, line_wire = _qp_line("".join(pending))
        qp.append(line_qp)
        wire.append(line_wire)
    return EncodedBody(qp, wire, size)


def assemble(headers: list[tuple[str, str]], text: str, html: str, boundary: str) -> bytes:
    """multipart/alternative (text first, HTML last: the preferred part goes last, RFC 2046)."""
    return assemble_wire(headers, text, html, boundary)[0]


def assemble_wire(
    headers: list[tuple[str, str]],
    text: str,
    html: str,
    boundary: str,
    *,
    raw: bool = True,
    html_body: EncodedBody | None = None,
) -> tuple[bytes, bytes | None]:
    """The message as `assemble` builds it, and what SMTP DATA transmits for it: dot-stuffed,
    ending in ".\r\n" (None when the headers hold a bare CR or LF: see deliver.wire_form,
    whose result this equals). Stuffing the cached lines costs a join, where stuffing the
    finished message scans and copies it three more times (~0.1 ms a digest).

    QP never emits "=_" (a literal "=" becomes "=3D"), so a boundary starting "=_" cannot occur
    in either body. The CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1),
    hence the extra one: each body keeps its final line break.

    With `raw=False` the message itself is only built when there is no wire form (b"" else):
    a send needs just the wire form, and deliver.raw_form gives the message back from it.
    `html_body`, when given, is `encode_chunks` of the HTML (`html` is then not read).
    """
    head = "".join(f"{name}: {value}{CRLF}" for name, value in headers).encode("ascii")
    part = "Content-Type: text/{}; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
    top = f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode()
    first = f"--{boundary}\r\n{part.format('plain')}\r\n\r\n".encode()
    second = f"\r\n--{boundary}\r\n{part.format('html')}\r\n\r\n".encode()
    end = f"\r\n--{boundary}--\r\n".encode()
    text_qp = _qp_pairs(text)
    if html_body is None:
        pairs = _qp_pairs(html)
        html_body = EncodedBody(list(map(_QP, pairs)), list(map(_WIRE, pairs)), 0)
    stuffable = crlf_lines(head)
    message = b""
    if raw or not stuffable:
        text_part, html_part = b"".join(map(_QP, text_qp)), b"".join(html_body.qp)
        message = b"".join((head, top, first, text_part, second, html_part, end))
    if not stuffable:
        return message, None
    # the fixed lines between the parts start with "-" or a letter: nothing to stuff there
    text_wire, html_wire = b"".join(map(_WIRE, text_qp)), b"".join(html_body.wire)
    wire = b"".join((dot_stuffed(head), top, first, text_wire, second, html_wire, end, b".\r\n"))
    return message, wire


@lru_cache(maxsize=64)  # one `now` per chunk of digests
def format_date(now: dt.datetime) -> str:
    """RFC 5322 date; a naive `now` is taken as UTC."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    return email.utils.format_datetime(now)


def dkim_enabled(settings: Settings) -> bool:
    return bool(settings.dkim_selector and settings.dkim_domain and settings.dkim_private_key_file)


@lru_cache(maxsize=4)
def _dkim_key(path: Path, mtime_ns: int) -> bytes:
    return path.read_bytes()


def load_dkim_key(settings: Settings) -> bytes:
    path = settings.dkim_private_key_file
    assert path is not None
    try:
        key = _dkim_key(path, path.stat().st_mtime_ns)
    except OSError as exc:
        raise ConfigError(
            f"setting NEWSLETTER_DKIM_PRIVATE_KEY_FILE: cannot read {str(path)!r} "
            f"({exc.strerror}); point it at the PEM private key"
        ) from exc
    if b"PRIVATE KEY" not in key:
        raise ConfigError(
            f"setting NEWSLETTER_DKIM_PRIVATE_KEY_FILE: {str(path)!r} is not a PEM private key"
        )
    return key


def sign_dkim(raw: bytes, settings: Settings) -> bytes:
    """Prepend a DKIM-Signature (relaxed/relaxed, rsa-sha256) when DKIM is configured.

    Returns `raw` unchanged when DKIM is not configured or the message already carries a
    signature for the same domain and selector, so callers may call it unconditionally.
    """
    if not dkim_enabled(settings):
        return raw

    selector, domain = str(settings.dkim_selector), str(settings.dkim_domain)
    head = raw.split(b"\r\n\r\n", 1)[0]
    for sig in re.findall(rb"(?im)^DKIM-Signature:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*", head):
        flat = re.sub(rb"\s+", b"", sig)
        if f";d={domain};".encode() in flat + b";" and f";s={selector};".encode() in flat + b";":
            return raw
    try:
        signature = dkim.sign(
            raw,
            selector.encode("ascii"),
            domain.encode("ascii"),
            load_dkim_key(settings),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode("ascii") for h in DKIM_HEADERS],
            linesep=b"\r\n",
        )
    except dkim.DKIMException as exc:
        raise ConfigError(f"DKIM signing failed for d={domain} s={selector}: {exc}") from exc
    return bytes(signature) + raw
