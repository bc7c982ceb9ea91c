"""GET /healthz: 200 and JSON when the store answers, 503 when it does not (for probes)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from newsletter.errors import StoreError
from newsletter.web.pages import call, context

log = logging.getLogger(__name__)


async def healthz(request: Request) -> JSONResponse:
    try:
        await call(context(request).store.ping)
    except StoreError as exc:
        # the reason names the database's host, port and user: for the log, not for anyone
        # who can reach a public probe
        log.error("health check: %s", exc)
        body = {"status": "error", "store": "unreachable"}
        return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
    return JSONResponse({"status": "ok", "store": "ok"}, headers={"Cache-Control": "no-store"})
