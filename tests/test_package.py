"""The package as users install it: a wheel built from a clean clone of the committed tree,
installed into a fresh virtualenv, runs the main job in an empty folder."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


def sh(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_wheel_runs_the_demo_in_an_empty_folder(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout: nothing committed to build from")
    head = sh("git", "-C", ROOT, "rev-parse", "HEAD").strip()
    clone = tmp_path / "clone"
    sh("git", "clone", "--quiet", "--no-checkout", ROOT, clone)
    sh("git", "-C", clone, "checkout", "--quiet", head)
    # No build isolation: the dev install brings setuptools, so this needs no network.
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
       "-w", tmp_path / "dist", clone)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("newsletter-*.whl")

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
       "--no-index", wheel)  # fmt: skip
    # The dependencies come from this virtualenv (appended to sys.path, after the wheel's own
    # site-packages); the package itself, its templates and examples must come from the wheel.
    purelib = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    deps = "\n".join(site.getsitepackages())
    (Path(purelib.strip()) / "test-deps.pth").write_text(deps + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "PYTHON"))}
    empty = tmp_path / "empty"
    empty.mkdir()
    where = sh(python, "-c", "import newsletter; print(newsletter.__file__)", cwd=empty, env=env)
    assert where.startswith(str(venv)), where
    assert not any(empty.iterdir())

    out = sh(venv / "bin" / "newsletter", "demo", cwd=empty, env=env)
    assert "delivered via: Maildir var/outbox/" in out
    digests = list((empty / "var" / "outbox" / "new").iterdir())
    assert len(digests) == 5
    assert b"Content-Type: text/html" in digests[0].read_bytes()
    assert (empty / "var" / "preview" / "index.html").is_file()

    mine = tmp_path / "mine"
    sh(venv / "bin" / "newsletter", "init", mine, "--templates", cwd=empty, env=env)
    assert (mine / "config" / "subscribers.yaml").is_file()
    assert (mine / "templates" / "digest.mjml").is_file()
