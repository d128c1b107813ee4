"""Training hardening (issue 9): --overwrite, --resume, data identity, out of memory, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_SETTINGS, tiny_dataset

from segmenter.config import load_config
from segmenter.errors import RunError
from segmenter.runs import open_run
from segmenter.training import train


def test_resume_of_a_folder_that_does_not_exist_is_refused(runner, tmp_path):
    out = tmp_path / "runs" / "typo"
    result = runner("train", "--resume", "--out", out)
    assert result.exit_code == 1
    assert f"Error: {out}: nothing to resume: the folder does not exist" in result.output
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    result = runner("train", "--resume", "--out", tmp_path / "empty", *_sets())
    assert result.exit_code == 1 and "nothing to resume" in result.output


def _sets() -> list[str]:
    return [arg for item in TINY_SETTINGS for arg in ("--set", item)]


def test_overwrite_removes_only_what_training_wrote(tmp_path):
    cfg = load_config(None, TINY_SETTINGS)
    out = tmp_path / "run"
    train(cfg, out, dataset=tiny_dataset())
    kept = {out / "predictions" / "a_water_mask.png": b"mask",
            out / "evaluation" / "evaluation.json": b"{}",
            out / "notes.txt": b"field notes"}
    for path, content in kept.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
    (out / "models" / "pw999.keras").write_bytes(b"stale")  # training's: goes
    train(cfg, out, overwrite=True, dataset=tiny_dataset())
    for path, content in kept.items():
        assert path.read_bytes() == content
    assert not (out / "models" / "pw999.keras").exists()
    assert open_run(out).finished_widths() == [16]


def test_resume_on_other_data_of_the_same_names_and_sizes_is_refused(tmp_path):
    cfg = load_config(None, [*TINY_SETTINGS, "train.steps=6"])
    out = tmp_path / "run"
    data = tiny_dataset()
    from segmenter.data.ontario import fingerprint

    data.fingerprint = fingerprint(data.train, data.test, 1.0)
    train(cfg, out, dataset=data)
    edited = tiny_dataset()
    edited.train[0].land[0, 0] = 1 - edited.train[0].land[0, 0]  # one label pixel edited
    edited.fingerprint = fingerprint(edited.train, edited.test, 1.0)
    with pytest.raises(RunError, match="the data differ from the data this run was trained"):
        train(cfg, out, resume=True, dataset=edited)


def test_fingerprint_tells_sample_seeds_apart(runner, tmp_path):
    """`sample-data --seed 1` with the same --n/--size: same names and sizes, other pixels
    (the old fingerprint could not tell them apart, so --resume went on)."""
    from segmenter.data.ontario import load_dataset

    for seed in (0, 1):
        assert runner("sample-data", tmp_path / f"s{seed}", "--n", "4", "--size", "64",
                      "--seed", str(seed)).exit_code == 0
    cfg = load_config(None, [*TINY_SETTINGS, "data.scale=1.0"])
    first = load_dataset(cfg.data.model_copy(update={"source": str(tmp_path / "s0")}))
    other = load_dataset(cfg.data.model_copy(update={"source": str(tmp_path / "s1")}))
    assert [i.stem for i in first.train] == [i.stem for i in other.train]
    assert first.fingerprint != other.fingerprint
    assert first.legacy_fingerprint == other.legacy_fingerprint


def test_out_of_memory_names_the_width_batch_size_and_key(tmp_path, monkeypatch):
    """TensorFlow's allocator failing mid-fit (as with train.widths={32: 20000}) becomes a
    failed width whose message names the key to lower, not `unexpected ...Error`."""
    import tensorflow as tf

    from segmenter.training.callback import WidthCallback

    def exhausted(self, batch, logs=None):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(WidthCallback, "on_train_batch_end", exhausted)
    cfg = load_config(None, TINY_SETTINGS)
    results = train(cfg, tmp_path / "run", dataset=tiny_dataset())
    assert results[0].status == "failed"
    assert results[0].message == (
        "out of CPU memory training patch width 16 with batch size 4; lower the batch size "
        "(train.widths.16) or the patch width")
    assert open_run(tmp_path / "run").status(16).status == "failed"


def test_ctrl_c_after_a_width_finishes_stops_and_marks_the_run_interrupted(tmp_path):
    """SIGINT right after the first width ends (the next model is being built) used to be
    swallowed: the run went on to the end with exit 0 and the manifest said 'running'."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "data: {source: sample, scale: 1.0, sample: {n: 4, size: 64, seed: 0}}\n"
        "model: {depth: 2, filters: 4}\n"
        "train: {widths: {16: 4, 32: 4}, steps: 300, validate_every: 20, "
        "validation_batches: 1}\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "segmenter", "train", "--config", str(config), "--out", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("pw16: 300 steps in"):
            process.send_signal(signal.SIGINT)
            sent = time.monotonic()
            break
    else:
        pytest.fail("".join(lines))
    rest = process.stderr.read()
    process.wait(timeout=120)
    assert time.monotonic() - sent < 60
    assert process.returncode == 130, "".join(lines) + rest
    assert "interrupted: pw32 stopped" in rest and "--resume" in rest, rest
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["widths"]["16"]["status"] == "finished"
    assert manifest["widths"]["32"]["status"] == "interrupted"


def test_stale_temporary_files_of_a_killed_run_are_removed_on_resume(tmp_path):
    cfg = load_config(None, [*TINY_SETTINGS, "train.steps=6"])
    out = tmp_path / "run"
    train(cfg, out, dataset=tiny_dataset())
    stale = [out / "models" / ".pw16.x1y2.tmp.keras", out / "state" / "pw16" / ".ckpt.z.tmp.keras"]
    other = out / "models" / ".pw32.abc.tmp.keras"  # another job's width: not ours to touch
    for path in [*stale, other]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    state = json.loads((out / "history" / "pw16.json").read_text())
    state["status"] = "running"  # as if killed before finishing
    (out / "history" / "pw16.json").write_text(json.dumps(state))
    train(cfg, out, resume=True, dataset=tiny_dataset())
    assert not any(path.exists() for path in stale)
    assert other.exists()




def test_train_prints_no_tensorflow_start_up_noise(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data: {source: sample, scale: 1.0, sample: {n: 4, size: 64, seed: 0}}\n"
        "model: {depth: 2, filters: 4}\n"
        "train: {widths: {16: 4}, steps: 2, validate_every: 2, validation_batches: 1}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a user's
    result = subprocess.run(
        [sys.executable, "-m", "segmenter", "train", "--config", str(config), "--out",
         str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for noise in ("absl::InitializeLog", "cuInit", "cudart_stub", "oneDNN"):
        assert noise not in result.stderr, result.stderr
