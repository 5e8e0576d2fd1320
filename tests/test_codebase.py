"""The codebase checks its own shape: layers import only downwards, no private name crosses a
package boundary, every package says what lives in it, and no labkit module grows unexplained."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "labkit"

# Lower layers never import higher ones. A new module must be placed here (the test says so).
LAYERS: list[tuple[str, ...]] = [
    ("labkit.errors",),
    ("labkit.config",),
    ("labkit.paths", "labkit.profile"),
    (
        "labkit.cgroups",
        "labkit.checkpoints",
        "labkit.memcache_meta",
        "labkit.ids",
        "labkit.history",
        "labkit.webapp.httpclient",
    ),
    ("labkit.services",),
    ("labkit.load",),
    ("labkit.datasets", "labkit.ui", "labkit.webapp"),
    ("labkit.lessons",),
    ("labkit.doctor", "labkit.course", "labkit.cli", "labkit"),
]
MAX_LINES = 450
# Debt recorded when these checks were written: each entry is to be removed when it is fixed; a NEW one fails.
KNOWN_PRIVATE_USES: set[str] = set()
KNOWN_LONG: set[str] = set()  # paid off: a module over MAX_LINES is split, or its docstring says why not


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best is None:
        pytest.fail(f"{module} is in no layer: add it to LAYERS in tests/test_codebase.py")
    return best


def _labkit_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "labkit"
            and node.level == 0
        ):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "labkit":
                    found.append((node.lineno, a.name, []))
    return found


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def test_layers_import_only_downwards():
    bad = []
    for module, path in _modules():
        if module == "labkit":
            continue
        mine = _layer(module)
        for line, target, names in _labkit_imports(path):
            targets = [target] if target != "labkit" else [f"labkit.{n}" for n in names]
            for t in targets:
                t_layer = _layer(t) if t != "labkit" else 0
                if t_layer > mine:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {t} (a higher layer)")
    assert not bad, "lower layers must not import higher ones:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_package():
    """`from labkit.x import _name` is fine inside package x (its internals); not from elsewhere or from tests."""
    bad = []
    files = [(m, p) for m, p in _modules()] + [("tests." + p.stem, p) for p in sorted((ROOT / "tests").rglob("*.py"))]
    for module, path in files:
        for line, target, names in _labkit_imports(path):
            privates = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target.split("."))
            if not privates and not private_module:
                continue
            if _package_of(module) == _package_of(target) and not module.startswith("tests."):
                continue
            if module.startswith("tests.") and target.startswith("labkit.lessons._solutions"):
                continue  # the reference solutions exist for the tests (never for notebooks)
            if str(path.relative_to(ROOT)) in KNOWN_PRIVATE_USES:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} {privates or ''}".rstrip())
    assert not bad, "private names used outside their package:\n" + "\n".join(bad)


def test_every_package_says_what_lives_there():
    missing = []
    for init in sorted(PKG.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if len(doc) < 40:
            missing.append(str(init.relative_to(ROOT)))
    assert not missing, "give these packages a docstring (what lives there, what may import it): " + ", ".join(missing)


def test_no_module_grows_unexplained():
    """Modules over ~450 lines say in their docstring why they stay whole ("One module on purpose: ...")."""
    long = []
    for _module, path in _modules():
        n = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n > MAX_LINES and "One module on purpose" not in doc and str(path.relative_to(ROOT)) not in KNOWN_LONG:
            long.append(f"{path.relative_to(ROOT)} ({n} lines)")
    assert not long, "split these along their seams, or say why not in the docstring: " + ", ".join(long)


def test_labkit_ships_its_types_and_checks_them():
    """py.typed tells a learner's type checker that labkit is typed; `make test` runs mypy before pytest."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (PKG / "py.typed").exists(), "labkit/py.typed is missing"
    assert "py.typed" in data["tool"]["setuptools"]["package-data"]["labkit"], "py.typed is not in package-data"
    recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "mypy" in recipe.split("pytest", 1)[0], "make test must run mypy before pytest"


def _layout_entries() -> list[tuple[Path, str]]:
    """(path, description) per entry of the README's layout block; indented entries are inside labkit/."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries: list[tuple[Path, str]] = []
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 6):  # a description's continuation line
            if entries and line.strip():
                entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
            continue
        name, _, desc = line.strip().partition(" ")
        base = ROOT / "labkit" if line.startswith("  ") else ROOT
        entries.append((base / name.rstrip("/"), desc))
    return entries


def test_readme_layout_matches_the_tree():
    """Every directory and module the README's layout names exists, files named in a description exist where it
    says, and every labkit package is in it (a new package must be described there)."""
    import re

    entries = _layout_entries()
    missing = [str(p.relative_to(ROOT)) for p, _ in entries if not p.exists()]
    for path, desc in entries:
        where = path if path.is_dir() else path.parent
        for name in re.findall(r"(?<![\w./])([A-Za-z_][\w]*\.py|_?[A-Za-z][\w]*/)(?![\w.])", desc):
            if not (where / name.rstrip("/")).exists():
                missing.append(f"{(where / name).relative_to(ROOT)} (named in the line of {path.name})")
    assert not missing, "the README's layout names what is not in the tree: " + ", ".join(missing)
    named = {p for p, _ in entries}
    packages = [d for d in sorted(PKG.iterdir()) if (d / "__init__.py").exists()]
    undocumented = [str(d.relative_to(ROOT)) for d in packages if d not in named]
    assert not undocumented, "add these labkit packages to the README's layout: " + ", ".join(undocumented)
