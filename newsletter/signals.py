"""SIGINT/SIGTERM for every long-running command: the first stops cleanly, the second abandons.

A first signal (systemd's stop, a deploy, Ctrl-C) sets the run's `stop` event: no new message
is started, the ones in flight finish, the ledger is committed. A second one calls `abandon`
(cancel the work): in-flight messages may then be sent again by the next run, with the same
Message-ID. Handlers can only be installed from the main thread (not under a test runner's
worker thread); elsewhere this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def graceful_stop(stop: asyncio.Event, abandon: Callable[[], object]) -> Iterator[None]:
    """Within a running event loop: first signal sets `stop`, the second calls `abandon`."""
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        if not stop.is_set():
            log.warning("%s: finishing the messages in flight (again to abandon them)", name)
            stop.set()
        else:
            log.warning("%s again: abandoning the messages in flight", name)
            abandon()

    main_thread = threading.current_thread() is threading.main_thread()
    sigs = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        yield
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
