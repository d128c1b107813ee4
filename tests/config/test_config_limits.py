"""Config hardening (issue 9): numeric limits, duplicate YAML keys, alias bombs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def _validate(runner, tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return runner("config", "validate", path), path


@pytest.mark.parametrize(("text", "key"), [
    ("train:\n  steps: 100000000000000000000000\n", "train.steps"),
    ("train:\n  validation_batches: 1000000\n", "train.validation_batches"),
    ("train:\n  validation_batches: 500\n  widths: {128: 64}\n", "train.validation_batches"),
    ("train:\n  widths: {32: 10000000}\n", "train.widths.32"),
    ("train:\n  seed: -1\n", "train.seed"),
    ("postprocess:\n  subsample: 10000000000\n", "postprocess.subsample"),
    ("predict:\n  batch_size: 100000000\n", "predict.batch_size"),
    ("predict:\n  adapt_norm: 1.5\n", "predict.adapt_norm"),
    ("predict:\n  adapt_norm: -0.1\n", "predict.adapt_norm"),
    ("predict:\n  vector_tolerance: .inf\n", "predict.vector_tolerance"),
    ("predict:\n  vector_tolerance: .nan\n", "predict.vector_tolerance"),
    ("data:\n  raster_max: .inf\n", "data.raster_max"),
    ("data:\n  raster_max: .nan\n", "data.raster_max"),
    ("predict:\n  widths: []\n", "predict.widths"),
])
def test_numbers_the_code_cannot_honour_are_refused(runner, tmp_path, text, key):
    result, path = _validate(runner, tmp_path, text)
    assert result.exit_code == 1, result.output
    assert f"Error: {path}: {key}:" in result.output


def test_duplicate_yaml_keys_are_refused_naming_the_key_and_both_lines(runner, tmp_path):
    result, path = _validate(runner, tmp_path,
                             "train:\n  steps: 10\n  validate_every: 5\n  steps: 20\n")
    assert result.exit_code == 1
    assert f"{path}:4: duplicate key 'steps' (first on line 2)" in result.output


def test_yaml_alias_bomb_fails_fast(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("data: {source: *i}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "segmenter", "config", "validate", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    assert f"{path}: refused: its aliases expand to more than" in result.stderr
