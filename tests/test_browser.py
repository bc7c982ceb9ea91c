"""Real-browser layout check: the compiled digest never scrolls sideways on a 375 px phone.

Headless Chromium clamps --window-size to >= 500 px, so the email is hosted in an <iframe
srcdoc> of exactly the width under test (same origin, so the host page can measure it), and
--dump-dom returns the measurement the host page's script writes into the DOM. The email
itself has no JavaScript; a dead proxy keeps Chromium off the network.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from newsletter.models import Paper, SelectedPaper, Selection, Subscriber, Topic, TopicMatch
from newsletter.render import Renderer
from newsletter.settings import Settings

from .render_helpers import EXPLORATION, NOW, OFFLINE, RLHF, SEEDS, listing, reader, select

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=127.0.0.1:9",
    "--virtual-time-budget=5000",
)
MEASURE = """
window.addEventListener('load', () => {
  const d = document.getElementById('mail').contentDocument;
  const width = d.documentElement.clientWidth;
  const wide = [];
  for (const el of d.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 0.5) {
      wide.push(el.tagName + '[' + (el.getAttribute('style') || '').slice(0, 60) + '] right='
                + Math.round(r.right));
    }
  }
  const scroll = Math.max(d.documentElement.scrollWidth, d.body.scrollWidth);
  document.body.setAttribute('data-result', JSON.stringify({width, scroll, wide: wide.slice(-3)}));
});
"""


def require_chromium(which: str | None, ci: str | None) -> str:
    """The chromium binary; skip with a reason when missing, but fail in CI."""
    if which:
        return which
    reason = "Debian's chromium not found (apt-get install chromium) for the 375 px layout check"
    if (ci or "").lower() == "true":
        pytest.fail(reason + "; CI must run the browser tests")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    return require_chromium(found, os.environ.get("CI"))


def measure(chromium: str, email_html: str, width: int, tmp_path: Path) -> dict[str, object]:
    host = tmp_path / f"host-{width}.html"
    host.write_text(
        '<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">'
        f'<iframe id="mail" width="{width}" height="20000" style="border:0;width:{width}px" '
        f'srcdoc="{html.escape(email_html, quote=True)}"></iframe>'
        f"<script>{MEASURE}</script></body></html>",
        encoding="utf-8",
    )
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom"]
    proc = subprocess.run(
        [*cmd, host.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )
    found = re.search(r'data-result="([^"]*)"', proc.stdout)
    assert found, f"chromium gave no measurement (exit {proc.returncode}): {proc.stderr[-800:]}"
    result: dict[str, object] = json.loads(html.unescape(found.group(1)))
    assert result["width"] == width  # no scrollbar or zoom ate into the viewport
    return result


def adversarial() -> Selection:
    """Everything that tends to push a phone layout sideways, in one digest."""
    long_url = "https://github.com/some-organisation/" + "a-very-long-repository-name-" * 6
    token = "Supercalifragilistic" * 6
    p = Paper(
        id="wide",
        title=f"{token}: a title with an unbreakable word",
        abstract=f"See {long_url}/tree/main/{token} for code. Offline RL with {token} tokens.",
        links=(long_url, "https://example.org/" + "x" * 150),
    )
    topic = Topic("Offline-reinforcement-learning-with-very-long-topic-names-everywhere", ())
    m = TopicMatch(topic.name, ("offline RL",), highlights=("Offline RL", token))
    sub = Subscriber("someone.with.a.long.address@" + "sub." * 10 + "example.org", topics=(topic,))
    return Selection(sub, dt.date(2026, 3, 17), (SelectedPaper(p, 1.0, 3, True, (m,)),))


@pytest.mark.browser
@pytest.mark.parametrize("width", [375, 600])
def test_digest_has_no_horizontal_overflow(
    chromium: str, settings: Settings, tmp_path: Path, width: int
) -> None:
    renderer = Renderer(settings)
    digests = [
        renderer.render(select(listing(SEEDS[1]), reader(OFFLINE, RLHF, EXPLORATION)), now=NOW),
        renderer.render(adversarial(), now=NOW),
    ]
    for email in digests:
        result = measure(chromium, email.html, width, tmp_path)
        assert result["scroll"] == width and not result["wide"], result


@pytest.mark.browser
def test_the_measurement_catches_a_too_wide_layout(chromium: str, tmp_path: Path) -> None:
    wide = '<html><body><table width="640" style="width:640px"><tr><td>x</td></tr></table>'
    result = measure(chromium, wide, 375, tmp_path)
    assert isinstance(result["scroll"], int) and result["scroll"] > 375 and result["wide"]


def test_missing_chromium_skips_locally_and_fails_in_ci() -> None:
    assert require_chromium("/usr/bin/chromium", "true") == "/usr/bin/chromium"
    with pytest.raises(pytest.skip.Exception, match="not found"):
        require_chromium(None, None)
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        require_chromium(None, "true")
