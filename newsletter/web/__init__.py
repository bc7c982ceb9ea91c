"""The reader's side as a small web app (Starlette under uvicorn): `app.py` builds it, one
module per kind of page (subscription, archive, feedback, health), `pages.py` what they share.
Nothing below this package imports it."""

from newsletter.web.app import create_app, serve

__all__ = ["create_app", "serve"]
