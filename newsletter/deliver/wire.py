"""The wire form of a message: what DATA transmits, computed once, off the event loop."""

from __future__ import annotations

import re

from newsletter.mime import crlf_lines, dot_stuffed

# An ASCII addr-spec that needs no quoting in MAIL FROM:<...> / RCPT TO:<...>.
PLAIN_ADDRESS = re.compile(r"[!#-;=?-~]+@[A-Za-z0-9.-]+", re.ASCII)


def wire_form(raw: bytes) -> bytes | None:
    """What DATA transmits for `raw` (dot-stuffed, ending in ".\r\n"), or None when `raw`
    has a bare CR or LF or no final CRLF (aiosmtplib's sendmail() then normalises it).

    A rendered digest already has CRLF endings, so three C-level counts and one replace do
    what sendmail() does with three regex passes (~0.5 ms per 30 KB). The run computes this
    in the render workers, off the event loop.
    """
    if not crlf_lines(raw):
        return None
    return dot_stuffed(raw) + b".\r\n"
