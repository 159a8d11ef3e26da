"""Layering rules checked on the source: no pass imports another pass (shared records live in
graphcache.analyses / graphcache.clock, shared graph queries in passes/graph_utils.py); every package ships."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

HELPERS = {"base", "graph_utils", "cost", "dead_code"}  # modules of the pass library that are not passes


def _pass_modules(root: Path) -> set[str]:
    return {p.stem for p in (root / "passes").glob("*.py") if "(Pass):" in p.read_text()}


def _imported_pass_modules(path: Path, passes: set[str], classes_allowed: bool = False) -> set[str]:
    """Pass modules ``path`` imports from (with ``classes_allowed``: other than to run a pass class)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level == 1 or module.startswith("graphcache.passes."):
                source = (path.parents[1] / "passes" / f"{module.rsplit('.', 1)[-1]}.py")
                text = source.read_text() if source.exists() else ""
                if classes_allowed and all(f"class {a.name}(Pass)" in text for a in node.names):
                    continue
                found.add(module.rsplit(".", 1)[-1])
    return found & passes


def test_no_pass_imports_another_pass(root):
    passes = _pass_modules(root)
    assert len(passes) >= 16 and not passes & HELPERS
    offenders = {name: sorted(_imported_pass_modules(root / "passes" / f"{name}.py", passes) - {name})
                 for name in passes}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_state_and_cfg_cache_do_not_reach_into_passes(root):
    passes = _pass_modules(root)
    for name in ("state", "cfg_cache", "analyses", "clock"):
        # running a pass (a lowering) is what the library is for; borrowing a pass's helpers or types is not
        assert _imported_pass_modules(root / "graphcache" / f"{name}.py", passes, classes_allowed=True) == set(), name


def test_every_package_is_listed_for_the_wheel(root):
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"graphcache"} | {f"graphcache.{p.parent.name}" for p in (root / "graphcache").glob("*/__init__.py")}
    found |= {"graphcache.passes", "graphcache.export"}
    assert found == listed
