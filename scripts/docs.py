"""Regenerate the README's settings table from the settings model: python scripts/docs.py"""

from pathlib import Path

from newsletter.settings import settings_reference

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text(encoding="utf-8")
head, rest = text.split("<!-- settings:start -->", 1)
_, tail = rest.split("<!-- settings:end -->", 1)
block = f"<!-- settings:start -->\n{settings_reference()}\n<!-- settings:end -->"
readme.write_text(head + block + tail, encoding="utf-8")
print(f"updated {readme}")
