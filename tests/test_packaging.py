"""Every third-party module segmenter imports is declared in pyproject.toml (issue 9)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
#: import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn",
                "skimage": "scikit-image"}


def _names(items):
    """Distribution names a requirement list declares; `dask[distributed]` declares both."""
    names = set()
    for item in items:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", item)
        names.add(match.group(1).lower())
        if match.group(2):
            names |= {extra.strip().lower() for extra in match.group(2).split(",")}
    return names


def _imports(tree, top_level_only):
    """Third-party top-level names imported in `tree` (only at module level when asked)."""
    nodes = []
    if top_level_only:
        stack = list(tree.body)
        while stack:  # module level, including try/if blocks, but not inside def/class
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {name for name in names
            if name not in sys.stdlib_module_names and name != "segmenter"}


def _missing(imported, declared):
    return sorted(DISTRIBUTION.get(name, name) for name in imported
                  if DISTRIBUTION.get(name, name).lower() not in declared)


def test_every_imported_module_is_declared():
    """Module-level imports need a core dependency; imports deferred into a function (the
    optional Dask path) need at least an optional extra that brings them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    extras = set().union(*(_names(items)
                           for items in project["optional-dependencies"].values()))
    top, anywhere = set(), set()
    for path in (REPO / "segmenter").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top |= _imports(tree, top_level_only=True)
        anywhere |= _imports(tree, top_level_only=False)
    assert _missing(top, core) == []
    assert _missing(anywhere, core | extras) == []


def test_keras_upper_bound_is_the_tested_release():
    from segmenter.training.distribute import KERAS_TESTED

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    keras = [item for item in project["dependencies"] if item.startswith("keras")][0]
    major, minor = KERAS_TESTED.split(".")
    assert f"<{major}.{int(minor) + 1}" in keras, keras


def test_untested_keras_is_a_warning(monkeypatch, caplog):
    import keras

    from segmenter.training.distribute import require_keras_private

    monkeypatch.setattr(keras, "__version__", "3.99.0")
    caplog.set_level("WARNING", logger="segmenter")
    require_keras_private(keras, ["__name__"], "test")
    assert any(r.levelname == "WARNING" and "3.99.0" in r.getMessage() for r in caplog.records)
