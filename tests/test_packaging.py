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


def test_every_imported_module_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!\[ ;]", item, maxsplit=1)[0].lower()
                for item in project["dependencies"]}
    imported = set()
    for path in (REPO / "segmenter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported
                   if name not in sys.stdlib_module_names and name not in {"segmenter"}}
    missing = sorted(DISTRIBUTION.get(name, name) for name in third_party
                     if DISTRIBUTION.get(name, name).lower() not in declared)
    assert missing == []


def test_keras_upper_bound_is_the_tested_release():
    from segmenter.distribute import KERAS_TESTED

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    keras = [item for item in project["dependencies"] if item.startswith("keras")][0]
    major, minor = KERAS_TESTED.split(".")
    assert f"<{major}.{int(minor) + 1}" in keras, keras


def test_untested_keras_is_a_warning(monkeypatch, caplog):
    import keras

    from segmenter.distribute import require_keras_private

    monkeypatch.setattr(keras, "__version__", "3.99.0")
    caplog.set_level("WARNING", logger="segmenter")
    require_keras_private(keras, ["__name__"], "test")
    assert any(r.levelname == "WARNING" and "3.99.0" in r.getMessage() for r in caplog.records)
