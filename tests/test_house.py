"""The house rules, read from the source and the docs (no JAX): no import circle in
genesis_jax/, functions within one screen and modules within ~400 lines, and README.md
and docs/ naming only what a clone has (links, commands, files)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "genesis_jax"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400


def module_names(package: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module under package."""
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known) -> set[str]:
    """The modules of `known` that the file's import statements name, at any depth (an
    import inside a function closes a circle as surely as one at the top)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1] + ([node.module] if node.module else [])
                source = ".".join(base)
            else:
                source = node.module or ""
            # `from pkg import sub` imports the module pkg.sub where there is one
            found.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                         for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_circles(package: Path) -> list[list[str]]:
    """Each circle of module imports as the path around it (first module repeated at the end)."""
    modules = module_names(package)
    graph = {name: sorted(imported_modules(name, path, modules)) for name, path in modules.items()}
    circles, done = [], set()

    def walk(name, trail):
        if name in trail:
            circle = trail[trail.index(name):] + [name]
            if frozenset(circle) not in done:
                done.add(frozenset(circle))
                circles.append(circle)
            return
        if name in visited:
            return
        visited.add(name)
        for imported in graph[name]:
            walk(imported, trail + [name])

    for start in sorted(graph):
        visited = set()
        walk(start, [])
    return circles


def test_no_import_circle_in_the_package():
    circles = import_circles(PACKAGE)
    assert not circles, "import circle(s): " + "; ".join(" -> ".join(c) for c in circles)


def test_the_circle_finder_names_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("def f():\n    from pkg.a import x\n")
    (package / "d.py").write_text("import pkg.a\n")  # leads into the circle, is not part of it
    assert import_circles(package) == [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]]
    (package / "sub" / "c.py").write_text("def f():\n    return 1\n")
    assert import_circles(package) == []


def test_functions_fit_one_screen_and_modules_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        where = path.relative_to(ROOT)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(source.splitlines())} lines (module)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, f"over {MAX_FUNCTION_LINES} lines a function / {MAX_MODULE_LINES} a module: {too_long}"


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose(path: Path) -> str:
    """The file's text without fenced code blocks (their brackets are not links)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)


def anchors(path: Path) -> set[str]:
    return {github_anchor(m) for m in re.findall(r"^#+ (.+)$", prose(path), flags=re.M)}


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved})")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {resolved.name})")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    assert not broken_links(doc), f"{doc.relative_to(ROOT)}: broken links {broken_links(doc)}"


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "there.md").write_text("# A heading, with punctuation\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading-with-punctuation) [gone](gone.md) [bad](there.md#nope)\n"
                    "```\n[not a link](inside/code.md)\n```\n[web](https://example.org/x)\n")
    assert broken_links(page) == ["gone.md (no gone.md)", "there.md#nope (no heading #nope in there.md)"]


def module_commands(text: str) -> set[str]:
    return set(re.findall(r"python -m ((?:genesis_jax|benchmarks)(?:\.\w+)+)", text))


def runnable(module: str) -> bool:
    """A `python -m` target: a module with a __main__ guard, or a package with __main__.py."""
    path = ROOT.joinpath(*module.split("."))
    if (path / "__main__.py").is_file():
        return True
    file = path.with_suffix(".py")
    return file.is_file() and "__name__ == \"__main__\"" in file.read_text()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_python_m_command_named_exists(doc):
    commands = module_commands(doc.read_text())
    assert not {c for c in commands if not runnable(c)}, f"{doc.relative_to(ROOT)} names commands a clone lacks"


def repository_paths(text: str) -> set[str]:
    """Paths into the repository that the text names (placeholders and globs left out)."""
    found = re.finditer(r"(?<![\w./-])((?:genesis_jax|benchmarks|tests|launch|docs|\.ci)/[\w./-]*[\w/])([*<]?)", text)
    return {m.group(1) for m in found if not m.group(2)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_what_a_clone_has(doc):
    text = doc.read_text()
    assert "GUIDE.md" not in text and "../shared" not in text, f"{doc.name} names files outside the repository"
    missing = sorted(p for p in repository_paths(text) if not (ROOT / p).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names paths a clone lacks: {missing}"


def test_the_docs_checks_see_a_missing_command_and_path():
    text = ("python -m genesis_jax.train and python -m genesis_jax.nothing; genesis_jax/nothing.py, docs/*.png, "
            "benchmarks/results/dry_run_*.json, RUN/images/val_<step>.png")
    assert {c for c in module_commands(text) if not runnable(c)} == {"genesis_jax.nothing"}
    assert repository_paths(text) == {"genesis_jax/nothing.py"}
