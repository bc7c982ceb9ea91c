"""The house rules of the layout, checked on the source (README "Layout"): imports run one way
(no circle, every import at the top of its file), SQL only in the store, aiosmtplib only in the
delivery package's SMTP files, the core never reads the clock, no module is a giant."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def imported(tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules a module imports, anywhere in it (TYPE_CHECKING blocks too)."""
    out = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out


def test_no_import_circle() -> None:
    mods = modules()
    graph = {name: imported(tree, set(mods)) - {name} for name, tree in mods.items()}
    for name in mods:  # a package's __init__ is imported with each of its modules
        parent = name.rpartition(".")[0]
        if parent in mods and parent != "newsletter":
            graph[name] = graph[name] - {parent}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_every_import_is_at_the_top_of_its_file() -> None:
    inner = [
        f"{name}:{sub.lineno}"
        for name, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for sub in ast.walk(node)
        if isinstance(sub, ast.Import | ast.ImportFrom)
    ]
    assert inner == [], "imports inside functions (a circle in hiding?)"


def test_the_layers_call_down() -> None:
    mods = modules()
    known = set(mods)
    commands = {name for name in mods if name.startswith("newsletter.commands")}
    above_delivery = {"newsletter.schedule", "newsletter.cli", *commands}
    for name, tree in mods.items():
        uses = imported(tree, known)
        if name.startswith("newsletter.deliver"):
            assert not uses & above_delivery, f"{name} imports {uses & above_delivery}"
        if name not in above_delivery and not name.startswith("newsletter.web"):
            assert "newsletter.schedule" not in uses, f"{name} imports the scheduler"
        if not name.startswith(("newsletter.deliver", "newsletter.web")) and name not in (
            above_delivery
        ):
            delivery = {u for u in uses if u.startswith("newsletter.deliver")}
            assert not delivery, f"{name} is below delivery but imports {delivery}"


SQL = re.compile(r"\b(exec_driver_sql|sa\.select|sa\.text|sa\.insert|sa\.update|sa\.delete)\b")


def test_sql_lives_only_in_the_store() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name == "store.py":
            continue
        hits = SQL.findall(path.read_text(encoding="utf-8"))
        assert not hits, f"{path}: SQL outside the store ({hits})"


def test_only_the_smtp_files_import_aiosmtplib() -> None:
    allowed = {"newsletter.deliver.smtp", "newsletter.deliver.failures"}
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mod = getattr(node, "module", None) or ""
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [mod]
                if any(n.split(".")[0] == "aiosmtplib" for n in names):
                    assert name in allowed, f"{name} imports aiosmtplib"


CLOCK = re.compile(r"\b(datetime\.now|date\.today|datetime\.utcnow|time\.time)\(")


def test_the_core_never_reads_the_clock() -> None:
    # the entry points read it and pass `now` down; the Maildir names files by the time
    edges = {"cli.py", "maildir.py"}
    for path in PACKAGE.rglob("*.py"):
        if path.name in edges or "web" in path.parts:
            continue
        hits = CLOCK.findall(path.read_text(encoding="utf-8"))
        assert not hits, f"{path}: reads the clock ({hits}); take `now` as an argument"


def test_no_module_holds_more_than_a_fifth_of_the_package() -> None:
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    total = sum(sizes.values())
    big = {str(p.relative_to(PACKAGE)): n for p, n in sizes.items() if n > 0.2 * total}
    assert big == {}, f"of {total} lines"
