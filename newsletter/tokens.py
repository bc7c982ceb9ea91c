"""Signed tokens for the links in every email: bound to a reader, a purpose and their data.

A token is `<timestamp>.<signature>` (itsdangerous TimestampSigner, HMAC-SHA256). The signed
value is `<purpose-salted>` `reader_id[:paper_id:vote]`, but only the timestamp and signature
travel in the `t=` parameter: the reader id, paper and vote are in the URL already, and the
server rebuilds the value from them. So a token for one reader or purpose never works for
another, and a changed URL part breaks the signature.

How long a token works depends on its purpose (`MAX_AGE`):
- vote and archive links: NEWSLETTER_LINK_MAX_AGE_DAYS, then refused as expired;
- unsubscribe ("subscription") and feed links: never expire. Unsubscribing is harmless and
  readers and mail providers use old mails; a feed reader keeps the URL it subscribed with.
  Rotating the key (and dropping the previous one) revokes them, as every link;
- resubscribe (the Undo button shown right after an unsubscribe): one hour. It turns mail back
  on, so it must not outlive the moment it was handed out for (see web/subscription.py).

Keys: NEWSLETTER_SIGNING_KEY (or _FILE), at least 32 bytes; NEWSLETTER_SIGNING_KEY_PREVIOUS is
still accepted during a rotation. With none configured, the first command that needs one
creates `var/signing-key` (mode 0600) and says where, never what; `send` and `serve` started in
the same folder then share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from newsletter.errors import BadToken, ConfigError
from newsletter.settings import Settings, key_problem

log = logging.getLogger(__name__)

Purpose = Literal["subscription", "resubscribe", "vote", "archive", "feed"]
# seconds a token of the purpose works; None: no limit; absent: the configured link max age
MAX_AGE: dict[Purpose, int | None] = {"subscription": None, "feed": None, "resubscribe": 3600}
AUTO_KEY_FILE = Path("var/signing-key")
_SEP = ":"


@dataclass(frozen=True, slots=True)
class SigningKeys:
    current: str
    previous: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never the keys themselves
        return f"SigningKeys(current=***, previous={len(self.previous)})"


def signing_keys(settings: Settings, *, auto_file: Path = AUTO_KEY_FILE) -> SigningKeys:
    """The configured keys, or a key created once in `auto_file` (mode 0600) when none is."""
    current = settings.signing_secret()
    if current is None:
        current = _auto_key(auto_file)
    previous = settings.previous_signing_secret()
    return SigningKeys(current, (previous,) if previous and previous != current else ())


def _auto_key(path: Path) -> str:
    # written whole to a private temporary file, then linked into place: a process starting at
    # the same moment never reads a half-written key, and a crash never leaves an empty one
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.link(temp, path)
    except FileExistsError:  # another process made it first: theirs is the key
        return _read_key(path)
    except OSError as exc:
        raise ConfigError(
            f"no signing key configured and cannot create {path} ({exc.strerror}); set "
            "NEWSLETTER_SIGNING_KEY_FILE or run in a writable folder"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    log.warning(
        "no signing key configured: created %s (mode 0600); keep it, and run `send` and "
        "`serve` in this folder or point NEWSLETTER_SIGNING_KEY_FILE at it",
        path.resolve(),
    )
    return _read_key(path)


def _read_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path} ({exc.strerror})") from exc
    problem = key_problem(key)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return key


class _Signer(TimestampSigner):
    """TimestampSigner with an injectable clock (tests sign in the past to expire tokens)."""

    def __init__(self, *args: Any, clock: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class Tokens:
    """Makes and checks tokens; the current key signs, every key verifies."""

    def __init__(
        self,
        keys: SigningKeys,
        *,
        max_age_days: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secrets = [*keys.previous, keys.current]  # itsdangerous signs with the last
        self.max_age = max_age_days * 86400
        self._clock = clock
        self._signers: dict[str, _Signer] = {}

    def _signer(self, purpose: Purpose) -> _Signer:
        signer = self._signers.get(purpose)
        if signer is None:
            signer = self._signers[purpose] = _Signer(
                self._secrets,
                salt=f"newsletter.{purpose}",
                digest_method=hashlib.sha256,
                clock=self._clock,
            )
        return signer

    def sign(self, purpose: Purpose, *parts: str) -> str:
        value = _value(parts)
        signed = self._signer(purpose).sign(value).decode("ascii")
        return signed[len(value) + 1 :]  # "<timestamp>.<signature>"

    def verify(self, purpose: Purpose, token: str, *parts: str) -> None:
        """Return when `token` was made for exactly this purpose and these parts, within the
        purpose's maximum age; raise BadToken otherwise."""
        try:
            value = _value(parts)
            max_age = MAX_AGE.get(purpose, self.max_age)
            self._signer(purpose).unsign(f"{value}.{token}", max_age=max_age)
        except SignatureExpired as exc:
            raise BadToken("this link has expired", expired=True) from exc
        except (BadSignature, ValueError, UnicodeError) as exc:
            raise BadToken("this link is not valid (altered, or not made by us)") from exc


def _value(parts: tuple[str, ...]) -> str:
    for part in parts:
        if not part or "." in part or _SEP in part or not part.isascii():
            raise ValueError(f"cannot sign {part!r}")
    return _SEP.join(parts)
