"""Training end to end on tiny data: run layout, reproducibility, NaN, bad input, kill -9."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_SETTINGS, stopped_at_step, tiny_dataset, tiny_yaml

from segmenter.config import load_config
from segmenter.errors import ConfigError, DataError
from segmenter.runs import open_run
from segmenter.training import train, validation_scores

pytestmark = pytest.mark.backend  # run again on JAX by the test command

REPO = Path(__file__).resolve().parents[2]


def _losses(run_dir: Path, width: int = 16) -> list[list[float]]:
    with (run_dir / "history" / f"pw{width}.csv").open() as handle:
        return [[float(v) for v in (r["loss"], r["val_loss"])] for r in csv.DictReader(handle)]


def test_training_writes_the_run_layout_and_is_reproducible(tmp_path, caplog):
    cfg = load_config(None, TINY_SETTINGS)
    with caplog.at_level(logging.INFO, logger="segmenter"):
        results = train(cfg, tmp_path / "a", dataset=tiny_dataset())
    again = train(cfg, tmp_path / "b", dataset=tiny_dataset())
    assert [r.status for r in results] == ["finished"]
    assert "pw16: 6 steps in" in caplog.text and "val water IoU" in caplog.text

    run = open_run(tmp_path / "a")
    assert run.finished_widths() == [16]
    for name in ("config.yaml", "manifest.json", "models/pw16.keras", "history/pw16.csv",
                 "history/pw16.json", "plots/pw16_loss.png"):
        assert (run.path / name).is_file(), name
    assert not (run.path / "state").exists()
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["widths"]["16"]["steps_done"] == 6
    assert manifest["data_fingerprint"] == "tiny"
    assert manifest["versions"]["keras"]
    assert [row["step"] for row in run.read_history(16)] == [3.0, 6.0]
    assert 0.0 <= run.val_score(16) <= 1.0

    model = run.load_model(16)
    other = open_run(tmp_path / "b").load_model(16)
    patch = tiny_dataset().test[0].image[None, :32, :32]
    np.testing.assert_allclose(model.predict(patch, verbose=0), other.predict(patch, verbose=0),
                               atol=1e-4)
    np.testing.assert_allclose(_losses(run.path), _losses(tmp_path / "b"), rtol=1e-4)
    assert again[0].final_loss == pytest.approx(results[0].final_loss, rel=1e-4)


def test_non_finite_loss_stops_the_width_with_a_message(tmp_path):
    data = tiny_dataset()
    for item in data.train:
        item.land[...] = np.nan  # a corrupt label: the loss cannot be finite
    results = train(load_config(None, TINY_SETTINGS), tmp_path, dataset=data)
    assert results[0].status == "failed"
    assert "training loss became nan at step 1" in results[0].message
    assert "last good checkpoint at step 0 kept" in results[0].message
    status = json.loads((tmp_path / "history" / "pw16.json").read_text())
    assert status["status"] == "failed" and "nan" in status["message"]
    assert not (tmp_path / "models" / "pw16.keras").exists()


def test_no_test_pairs_trains_without_validation(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        results = train(load_config(None, TINY_SETTINGS), tmp_path,
                        dataset=tiny_dataset(test=False))
    assert "no test pairs: validation is off" in caplog.text
    assert results[0].status == "finished" and results[0].final_val_loss is None
    assert open_run(tmp_path).val_score(16) is None


def test_bad_input_is_refused_before_training(tmp_path):
    cfg = load_config(None, TINY_SETTINGS)
    with pytest.raises(DataError, match="no training pairs"):
        train(cfg, tmp_path / "a", dataset=tiny_dataset(n_train=0))
    with pytest.raises(DataError, match="patch width 16: no training image is at least 16x16"):
        train(cfg, tmp_path / "b", dataset=tiny_dataset(size=12))
    with pytest.raises(ConfigError, match="--patch-width 48: not in train.widths"):
        train(cfg, tmp_path / "c", widths=[48], dataset=tiny_dataset())


def test_overwrite_keeps_the_old_run_when_the_data_fail(tmp_path):
    cfg = load_config(None, TINY_SETTINGS)
    train(cfg, tmp_path / "run", dataset=tiny_dataset())
    model = tmp_path / "run" / "models" / "pw16.keras"
    stamp = model.stat().st_mtime_ns
    with pytest.raises(DataError, match="no training pairs"):
        train(cfg, tmp_path / "run", overwrite=True, dataset=tiny_dataset(n_train=0))
    with pytest.raises(DataError, match="no training image is at least 16x16"):
        train(cfg, tmp_path / "run", overwrite=True, dataset=tiny_dataset(size=12))
    with pytest.raises(DataError, match="no training image is at least 16x16"):
        train(cfg, tmp_path / "run", widths=[16], overwrite=True,
              dataset=tiny_dataset(size=12))
    assert model.stat().st_mtime_ns == stamp
    assert open_run(tmp_path / "run").finished_widths() == [16]


def test_cli_refusals_are_one_line(runner, tmp_path):
    (tmp_path / "file").write_text("x")
    result = runner("train", "--out", tmp_path / "file" / "run", *_sets())
    assert result.exit_code == 1
    assert "cannot create run directory" in result.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(load_config(None, TINY_SETTINGS).to_yaml())
    result = runner("train", "--out", tmp_path / "run", *_sets())
    assert result.exit_code == 1 and "run exists; use --resume" in result.output
    result = runner("train", "--out", tmp_path / "run", "--resume", *_sets(),
                    "--set", "train.learning_rate=0.5")
    assert result.exit_code == 1
    assert "config differs in train.learning_rate" in result.output
    assert len(result.output.strip().splitlines()) == 1


def _sets() -> list[str]:
    out = []
    for item in TINY_SETTINGS:
        out += ["--set", item]
    return out


def test_validation_iou_uses_the_metrics_convention_and_reads_logits():
    truth = np.array([0.0, 0.0, 1.0, 1.0, 0.0])
    sigmoid = load_config(None, ["train.loss=mse"])
    # prob exactly 0.5 is water, as in `evaluate` and postprocess `global`
    assert validation_scores(truth, np.array([0.1, 0.9, 0.9, 0.2, 0.5]), sigmoid) == (
        pytest.approx(2 / 4))
    assert validation_scores(np.ones(3), np.ones(3), sigmoid) == 1.0  # no water anywhere
    logits = load_config(None, ["model.activation=linear", "train.loss=bce"])
    # logits: -1 -> p 0.27 water, 0.3 -> p 0.57 land; a raw 0.3 would have been water
    assert validation_scores(truth[:2], np.array([-1.0, 0.3]), logits) == pytest.approx(0.5)
    assert validation_scores(truth[:2], np.array([-1.0, 0.3]), sigmoid) == 1.0


def _validation_scores(model, cfg) -> tuple[float, np.ndarray]:
    """A saved model's water IoU on the fixed validation patches, as training scores it, and
    its probabilities there."""
    from segmenter.metrics import confusion, water_from_land, water_from_prob
    from segmenter.training.pipeline import validation_patches

    batches = validation_patches(tiny_dataset().test, 16, 4, 1, seed=cfg.train.seed)
    images = np.concatenate([b[0] for b in batches])
    lands = np.concatenate([b[1] for b in batches])[..., 0]
    prob = np.asarray(model(images, training=False))[..., 0]
    return confusion(water_from_prob(prob), water_from_land(lands)).scores()["water_iou"], prob


def test_linear_model_with_logit_loss_is_saved_with_a_sigmoid_head(tmp_path):
    from segmenter.model.introspect import head_activation

    cfg = load_config(None, [*TINY_SETTINGS, "model.activation=linear", "train.loss=bce"])
    results = train(cfg, tmp_path, dataset=tiny_dataset())
    assert results[0].status == "finished"
    model = open_run(tmp_path).load_model(16)
    assert head_activation(model) == "sigmoid"
    # The recorded validation IoU is the saved model's, thresholded as `evaluate` does.
    iou, prob = _validation_scores(model, cfg)
    assert 0.0 < prob.min() and prob.max() < 1.0
    assert results[0].final_val_water_iou == pytest.approx(iou, abs=1e-6)


def test_ema_changes_what_is_saved_and_validated_not_how_training_goes(tmp_path):
    """train.ema: the losses are those of a run without it (training goes on from the raw
    weights, also across fit's end after a shorter last interval: 7 steps, validation every 3),
    while the saved model is the moving average, and the history scores that model."""
    plain = load_config(None, [*TINY_SETTINGS, "train.steps=7", "train.learning_rate=0.01"])
    averaged = load_config(None, [*TINY_SETTINGS, "train.steps=7", "train.learning_rate=0.01",
                                  "train.ema=0.5"])
    train(plain, tmp_path / "plain", dataset=tiny_dataset())
    results = train(averaged, tmp_path / "ema", dataset=tiny_dataset())
    assert results[0].status == "finished"
    assert [row[0] for row in _losses(tmp_path / "ema")] == pytest.approx(
        [row[0] for row in _losses(tmp_path / "plain")], rel=1e-5)

    raw = open_run(tmp_path / "plain").load_model(16)
    average = open_run(tmp_path / "ema").load_model(16)
    pairs = zip(raw.trainable_weights, average.trainable_weights, strict=True)
    assert any(not np.allclose(a.numpy(), b.numpy(), atol=1e-6) for a, b in pairs), (
        "the saved model is the raw weights, not their average")
    assert results[0].final_val_water_iou == pytest.approx(
        _validation_scores(average, averaged)[0], abs=1e-6)


def test_ema_average_gets_batchnorm_statistics_of_its_own(tmp_path):
    """The average of the weights never ran forward in training: the statistics training kept
    are the raw weights'. The saved average holds its own, those of one training-mode pass of
    its weights over the training patches drawn for it, not the raw run's."""
    from segmenter.model.norm import adapted_statistics, current_statistics
    from segmenter.training.loop import averaging_windows
    from segmenter.training.pipeline import PatchSource, eligible_images

    settings = [*TINY_SETTINGS, "train.steps=7", "train.learning_rate=0.01"]
    averaged = load_config(None, [*settings, "train.ema=0.5"])
    train(load_config(None, settings), tmp_path / "plain", dataset=tiny_dataset())
    train(averaged, tmp_path / "ema", dataset=tiny_dataset())
    average = open_run(tmp_path / "ema").load_model(16)
    raw = open_run(tmp_path / "plain").load_model(16)

    source = PatchSource.from_images(eligible_images(tiny_dataset().train, 16, "train"))
    windows = averaging_windows(source, averaged, 16)
    assert windows.shape == (4096, 16, 16, 3)  # 2^20 pixels of 16 px patches, whole batches
    saved = current_statistics(average)
    measured = adapted_statistics(average, windows, 1.0)
    assert len(saved) > 0
    for (mean, variance), (want_mean, want_variance) in zip(saved, measured, strict=True):
        np.testing.assert_allclose(mean, want_mean, atol=1e-4)
        np.testing.assert_allclose(variance, want_variance, rtol=1e-3, atol=1e-5)
    assert any(not np.allclose(mean, other, atol=1e-3)
               for (mean, _), (other, _) in zip(saved, current_statistics(raw), strict=True))


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(tmp_path, ema):
    """Stopped mid-interval (step 5 of 9, checkpoint at 3), resumed: same losses, same
    weights as a run that was never interrupted (same patches per step, restored optimiser,
    and with train.ema its moving average)."""
    cfg = load_config(None, [*TINY_SETTINGS, "train.steps=9", f"train.ema={ema}"])
    train(cfg, tmp_path / "full", dataset=tiny_dataset())
    with stopped_at_step(5):
        train(cfg, tmp_path / "part", dataset=tiny_dataset())
    state = json.loads((tmp_path / "part" / "state" / "pw16" / "state.json").read_text())
    assert state["step"] == 3
    train(cfg, tmp_path / "part", resume=True, dataset=tiny_dataset())

    full, part = open_run(tmp_path / "full"), open_run(tmp_path / "part")
    assert _losses(part.path) == _losses(full.path)
    for a, b in zip(full.load_model(16).get_weights(), part.load_model(16).get_weights(),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_kill_9_mid_run_then_resume(tmp_path):
    """A real `segmenter train` killed with SIGKILL continues from its last checkpoint."""
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_yaml(steps=240, every=10))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segmenter", "-q", "train", "--config", str(config),
               "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    state = out / "state" / "pw16" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 20 <= killed_at < 240

    # No --config: the run's saved config is used.
    resumed = subprocess.run(
        [sys.executable, "-m", "segmenter", "train", "--out", str(out), "--resume"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {killed_at}/240" in resumed.stderr, resumed.stderr
    run = open_run(out)
    assert run.finished_widths() == [16]
    steps = [int(row["step"]) for row in run.read_history(16)]
    assert steps == list(range(10, 241, 10))
