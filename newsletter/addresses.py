"""One address, one key: the form every email address is compared and stored under.

`reader@bücher.example` and `reader@xn--bcher-kva.example`, the NFC and NFD spellings of
`élodie@example.org`, and `Ada@Example.org` are each one mailbox. `address_key` folds them to one
string: Unicode NFC, the domain IDNA-decoded to its Unicode form (so a punycode and a Unicode
spelling meet), everything lower-cased (as the delivery ledger has always keyed addresses, so
stored rows keep their keys). Subscriber validation refuses two entries with one key; the
ledger, the paper history, the schedule's watermarks and the CLI's `--email` all look addresses
up by it.
"""

from __future__ import annotations

import unicodedata

import idna


def address_key(email: str) -> str:
    """The comparison key of an address (pure; total: text that is no address is only folded)."""
    text = unicodedata.normalize("NFC", email.strip())
    local, at, domain = text.rpartition("@")
    if not at:
        return text.lower()
    return f"{local.lower()}@{_domain_key(domain)}"


def _domain_key(domain: str) -> str:
    labels = []
    for label in domain.rstrip(".").split("."):
        try:
            labels.append(idna.decode(label, uts46=True) if label else label)
        except idna.IDNAError:  # not a valid IDNA label: compare it as written
            labels.append(label)
    return unicodedata.normalize("NFC", ".".join(labels)).lower()
