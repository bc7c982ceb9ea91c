"""Delivery: send one edition to every subscriber exactly once, through faults, crashes, restarts.

Transports: SMTP through aiosmtplib (a pool of reused connections; `smtp` and `failures` are the
only modules that import aiosmtplib) or, when NEWSLETTER_SMTP_HOST is unset, a local Maildir.

The run streams. Subscribers are taken in chunks: the chunk's ledger rows are read, papers are
selected and digests rendered (in a process pool on large runs, so rendering uses the other
core), the `planned` rows are committed, and the messages go into a bounded queue that the
senders drain. Memory stays flat however many subscribers there are.

Failures are classified, never allowed to stop the batch: a lost connection, a timeout before
the message was handed over or a 4xx reply is retried with exponential backoff and jitter up to
NEWSLETTER_SMTP_MAX_ATTEMPTS, then left as a temporary failure (`failed`, with a next attempt
time) for the next run; 421 also closes that connection and shrinks the pool for a while; a 5xx
for the recipient or the message is permanent for that subscriber only (`failed_permanent`,
sent again only by --resend), unless the first replies of the run are all the same refusal (the
brake: the relay, not the readers). A timeout or hang-up after the whole message went out is
`unknown`: the server may have it, so it is not sent again before
NEWSLETTER_UNKNOWN_RETRY_AFTER (or --resend). Errors that no retry can fix (login refused,
untrusted certificate, sender refused) stop the run with a DeliveryError naming the setting to
check; unsent rows stay `planned` for the next run.

Delivery guarantee. Every (edition, subscriber) is one ledger row. Before a message's SMTP
transaction starts, its row is committed as `planned` with the Message-ID and paper ids; it
becomes `sent`, together with the subscriber's paper history in one transaction, only after
the server answered 250 to the end of DATA. `sent` rows are committed in groups, and a sender
takes no new message until the group holding its 250 has committed, so at most one message per
sender is ever in flight, handed to the server but not yet recorded as sent: 2 x
NEWSLETTER_SMTP_POOL_SIZE for SMTP, 4 for the Maildir. After a crash, even SIGKILL, the next run
loses no subscriber and sends at most those in-flight messages a second time, with the same
Message-ID (derived from edition and address), so clients can tell the copy.

Per backend: on SQLite one sender per edition (the store's sender lock; a second one gets
LockHeld). On PostgreSQL any number of processes on any hosts are workers of the edition: planned
once, rows claimed with leases, a dead worker's rows taken over when its lease runs out, so the
guarantee above holds with "the dead worker's in-flight messages" (see `claims`).

Layout, each file one job, imports running down this list:
    failures   classify errors, retry timing, the brake
    wire       the DATA payload of a message, and the message back from it
    report     DeliveryReport and the running tally
    progress   progress bar / periodic log lines
    smtp       the SMTP pool (per-phase timeouts, backoff, 421, rate limit, login once)
    maildir    the local Maildir transport
    transport  the Transport protocol and the choice between the two
    claims     PostgreSQL scale-out: planning once, claims with leases, the shared rate limit
    ledger     group commit of outcomes (the SQL is the store's)
    workers    select + render a chunk, inline or in forked worker processes
    run        the send loop of one edition
    api        send_edition, run_send, edition_status
"""

from newsletter.deliver.api import edition_lock, edition_status, run_send, send_edition
from newsletter.deliver.failures import Brake, classify, masked_reply, reply_text
from newsletter.deliver.report import DeliveryReport
from newsletter.deliver.smtp import SmtpTransport, smtp_endpoint
from newsletter.deliver.transport import Transport, make_transport
from newsletter.deliver.wire import wire_form

__all__ = [
    "Brake",
    "DeliveryReport",
    "SmtpTransport",
    "Transport",
    "classify",
    "edition_lock",
    "edition_status",
    "make_transport",
    "masked_reply",
    "reply_text",
    "run_send",
    "send_edition",
    "smtp_endpoint",
    "wire_form",
]
