"""The wire form of a message: what DATA transmits, computed once, off the event loop."""

from __future__ import annotations

import re

# An ASCII addr-spec that needs no quoting in MAIL FROM:<...> / RCPT TO:<...>.
PLAIN_ADDRESS = re.compile(r"[!#-;=?-~]+@[A-Za-z0-9.-]+", re.ASCII)


def wire_form(raw: bytes) -> bytes | None:
    """What DATA transmits for `raw` (dot-stuffed, ending in ".\r\n"), or None when `raw`
    has a bare CR or LF or no final CRLF (aiosmtplib's sendmail() then normalises it).

    A rendered digest already has CRLF endings, so three C-level counts and one replace do
    what sendmail() does with three regex passes (~0.5 ms per 30 KB). The run computes this
    in the render workers, off the event loop.
    """
    crlf = raw.count(b"\r\n")
    if not (raw.endswith(b"\r\n") and raw.count(b"\n") == crlf and raw.count(b"\r") == crlf):
        return None
    # RFC 5321 4.5.2: a line that starts with "." gets one more; lines end only in CRLF here
    body = b"." + raw if raw.startswith(b".") else raw
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
