"""E-mail addresses, in one place: validating them, their comparison key, their wire form.

`validate_address` is the one validation (the subscriber file and the settings use it);
`check_address` gives the plain ASCII form an SMTP command and a header carry (or says why an
address cannot be sent to); `address_key` is the form every address is compared and stored under.

`reader@bücher.example` and `reader@xn--bcher-kva.example`, the NFC and NFD spellings of
`élodie@example.org`, and `Ada@Example.org` are each one mailbox. `address_key` folds them to one
string: Unicode NFC, the domain IDNA-decoded to its Unicode form (so a punycode and a Unicode
spelling meet), everything lower-cased (as the delivery ledger has always keyed addresses, so
stored rows keep their keys). Subscriber validation refuses two entries with one key; the
ledger, the paper history, the schedule's watermarks and the CLI's `--email` all look addresses
up by it.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import idna
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9_+-]{1,64}(?:\.[A-Za-z0-9_+-]{1,64})*")


def validate_address(value: str) -> str:
    """The address, normalised, or ValueError saying what is wrong with it (syntax only: no
    DNS lookups at validation time).

    A plain address (a short dot-atom of letters, digits, `_`, `+`, `-` before the @) is
    validated by its domain alone, once per domain: email_validator normalises such a local
    part to itself. Anything else, or any domain it refuses, gets the full validation."""
    local, at, domain = value.rpartition("@")
    plain = at and len(value) <= 128 and _PLAIN_LOCAL.fullmatch(local)
    if plain and len(local) <= 64 and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES:
        normal = _normal_domain(domain)
        if normal is not None and len(normal) <= 64:
            return f"{local}@{normal}"
    try:
        # no SMTPUTF8: the sender speaks plain SMTP, so an address it could never send to
        # (a non-ASCII local part) is refused here, where the file's line is known
        valid = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        if not local.isascii():
            raise ValueError(
                "has a non-ASCII name before the @, which needs SMTPUTF8 (not supported): "
                "ask the reader for an ASCII address"
            ) from None
        raise ValueError(f"is not a valid email address ({exc})") from None
    return str(valid.normalized)


@lru_cache(maxsize=1024)
def _normal_domain(domain: str) -> str | None:
    """The domain as email_validator normalises it, or None if it refuses it."""
    try:
        return str(validate_email(f"a@{domain}", check_deliverability=False).domain)
    except EmailNotValidError:
        return None


def address_key(email: str) -> str:
    """The comparison key of an address (pure; total: text that is no address is only folded)."""
    text = unicodedata.normalize("NFC", email.strip())
    local, at, domain = text.rpartition("@")
    if not at:
        return text.lower()
    return f"{local.lower()}@{_domain_key(domain)}"


@lru_cache(maxsize=4096)  # most subscribers share a few mail domains
def _domain_key(domain: str) -> str:
    labels = []
    for label in domain.rstrip(".").split("."):
        try:
            labels.append(idna.decode(label, uts46=True) if label else label)
        except idna.IDNAError:  # not a valid IDNA label: compare it as written
            labels.append(label)
    return unicodedata.normalize("NFC", ".".join(labels)).lower()


def check_address(address: str) -> str:
    """A plain ASCII addr-spec (IDN domains as punycode) or ValueError saying what is wrong."""
    if _CONTROL.search(address) or any(c.isspace() for c in address):
        raise ValueError(f"address {address!r} contains whitespace or a control character")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"address {address!r} is not of the form name@domain")
    if not local.isascii():
        raise ValueError(f"address {address!r} has a non-ASCII local part (needs SMTPUTF8)")
    if not _LOCAL.fullmatch(local):
        raise ValueError(f"address {address!r} has a local part that needs quoting")
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError as exc:
        raise ValueError(f"address {address!r} has an invalid domain ({exc})") from None
    if not all(_LABEL.fullmatch(label) for label in domain.split(".")):
        raise ValueError(f"address {address!r} has an invalid domain")
    return f"{local}@{domain}"
