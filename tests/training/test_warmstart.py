"""Fine-tuning (``train.init_from`` / ``--init-from``): a run that starts from another's models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_SETTINGS, stopped_at_step, tiny_dataset

from segmenter.config import load_config
from segmenter.errors import ConfigError
from segmenter.runs import open_run
from segmenter.training import train

pytestmark = pytest.mark.backend  # run again on JAX by the test command


def _kernels(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights if "kernel" in w.path]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "run"
    train(load_config(None, TINY_SETTINGS), path, dataset=tiny_dataset())
    return path


def test_fine_tuned_run_starts_from_the_source_models_and_leaves_them(source, tmp_path):
    before = _digest(source)
    # A rate too small to move the weights: what the run saves is where it started.
    still = [*TINY_SETTINGS, "train.learning_rate=1e-12", f"train.init_from={source}"]
    train(load_config(None, still), tmp_path / "tuned", dataset=tiny_dataset(n_train=2))
    scratch = [*TINY_SETTINGS, "train.learning_rate=1e-12"]
    train(load_config(None, scratch), tmp_path / "scratch", dataset=tiny_dataset(n_train=2))

    trained = _kernels(open_run(source).load_model(16))
    tuned = open_run(tmp_path / "tuned")
    for got, want in zip(_kernels(tuned.load_model(16)), trained, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    fresh = _kernels(open_run(tmp_path / "scratch").load_model(16))
    assert max(np.abs(a - b).max() for a, b in zip(fresh, trained, strict=True)) > 1e-3
    assert tuned.config.train.init_from == str(source)  # config.yaml says where it started
    assert _digest(source) == before


def test_fine_tuning_learns_on_the_new_photos(source, tmp_path):
    cfg = load_config(None, [*TINY_SETTINGS, "train.steps=3", f"train.init_from={source}"])
    train(cfg, tmp_path / "tuned", dataset=tiny_dataset(n_train=2))
    trained = _kernels(open_run(source).load_model(16))
    tuned = _kernels(open_run(tmp_path / "tuned").load_model(16))
    moved = max(np.abs(a - b).max() for a, b in zip(tuned, trained, strict=True))
    assert 1e-5 < moved < 0.5  # moved by three steps, not replaced


@pytest.mark.parametrize(("extra", "message"), [
    (["train.init_from=MISSING"], "train.init_from: MISSING: run directory not found"),
    (["train.widths={16: 4, 32: 2}", "train.init_from=SOURCE"],
     "has no finished model for patch width 32 (finished widths: 16)"),
    (["model.filters=8", "train.init_from=SOURCE"],
     "model.filters: 8 here, 4 in the source run"),
    (["train.init_from=OUT"], "is the run being written (--out)"),
])
def test_bad_sources_are_refused_before_anything_is_written(source, tmp_path, extra, message):
    out = tmp_path / "tuned"
    places = {"MISSING": str(tmp_path / "nowhere"), "SOURCE": str(source), "OUT": str(out)}
    settings = [*TINY_SETTINGS] + [
        "=".join([key, places.get(value, value)]) for key, value in
        (item.split("=", 1) for item in extra)]
    with pytest.raises(ConfigError) as caught:
        train(load_config(None, settings), out, dataset=tiny_dataset())
    assert message.replace("MISSING", str(tmp_path / "nowhere")) in str(caught.value)
    assert not out.exists()


def test_a_refused_source_leaves_the_run_it_would_overwrite(source, tmp_path):
    out = tmp_path / "earlier"
    train(load_config(None, TINY_SETTINGS), out, dataset=tiny_dataset())
    before = _digest(out)
    wider = [*TINY_SETTINGS, "model.filters=8", f"train.init_from={source}"]
    with pytest.raises(ConfigError, match="model.filters: 8 here, 4 in the source run"):
        train(load_config(None, wider), out, overwrite=True, dataset=tiny_dataset())
    assert _digest(out) == before


def test_another_orientation_than_the_source_is_refused_naming_both(source, tmp_path):
    saved = open_run(source).config.data.upright
    assert saved in (True, False)
    settings = [*TINY_SETTINGS, f"data.upright={not saved}", f"train.init_from={source}"]
    with pytest.raises(ConfigError) as caught:
        train(load_config(None, settings), tmp_path / "tuned", dataset=tiny_dataset())
    assert str(caught.value).startswith(f"train.init_from: {source} was trained with other")
    assert f"data.upright: {not saved!r} here, {saved!r} in the source run" in str(caught.value)


@pytest.mark.parametrize("source_kept", [True, False])
def test_a_stopped_fine_tune_resumes_from_its_checkpoint(source, tmp_path, source_kept):
    """Resumed at its checkpoint (step 3 of 9), a fine-tune ends where an uninterrupted one
    does: the checkpoint, not the source's weights, is where it goes on from, and the source
    is not needed any more (moved away here when not ``source_kept``)."""
    import shutil

    own = tmp_path / "source"
    shutil.copytree(source, own)
    cfg = load_config(None, [*TINY_SETTINGS, "train.steps=9", f"train.init_from={own}"])
    train(cfg, tmp_path / "full", dataset=tiny_dataset(n_train=2))

    with stopped_at_step(5):
        train(cfg, tmp_path / "part", dataset=tiny_dataset(n_train=2))
    if not source_kept:
        own.rename(tmp_path / "moved")
    train(cfg, tmp_path / "part", resume=True, dataset=tiny_dataset(n_train=2))
    full, part = open_run(tmp_path / "full"), open_run(tmp_path / "part")
    for a, b in zip(full.load_model(16).get_weights(), part.load_model(16).get_weights(),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_source_run_on_s3_is_read_like_predict_reads_one(source, s3, tmp_path):
    s3.upload_folder(source, "masks", "runs/source")
    still = [*TINY_SETTINGS, "train.learning_rate=1e-12", "train.init_from=s3://masks/runs/source",
             f"data.endpoint_url={s3.endpoint}", f"data.cache_dir={tmp_path / 'cache'}"]
    train(load_config(None, still), tmp_path / "tuned", dataset=tiny_dataset(n_train=2))
    tuned = _kernels(open_run(tmp_path / "tuned").load_model(16))
    for got, want in zip(tuned, _kernels(open_run(source).load_model(16)), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    missing = [*still[:-3], "train.init_from=s3://masks/runs/none", *still[-2:]]
    with pytest.raises(ConfigError, match=r"^train.init_from: s3://masks/runs/none: not a "):
        train(load_config(None, missing), tmp_path / "other", dataset=tiny_dataset(n_train=2))


def test_cli_init_from_refuses_in_one_line(runner, tmp_path):
    sets = [arg for item in TINY_SETTINGS for arg in ("--set", item)]
    result = runner("train", "--out", tmp_path / "run", "--init-from", tmp_path / "none", *sets)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: train.init_from: {tmp_path / 'none'}: run directory not found")


def test_cli_init_from_names_the_source_by_its_absolute_path(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what config.yaml records holds when resumed from elsewhere
    sets = [arg for item in TINY_SETTINGS for arg in ("--set", item)]
    result = runner("train", "--out", tmp_path / "run", "--init-from", "none", *sets)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: train.init_from: {tmp_path / 'none'}: run directory not found")


def test_a_source_saved_before_the_row_channel_key_is_read_as_without_it(source, tmp_path):
    import shutil

    from segmenter.training.warmstart import check_architecture

    old = tmp_path / "old"
    shutil.copytree(source, old)
    text = (old / "config.yaml").read_text()
    assert "row_channel: false" in text
    (old / "config.yaml").write_text(text.replace("row_channel: false", "row_channel: auto"))
    cfg = open_run(source).config  # the same networks, the key decided
    check_architecture(open_run(old), cfg)
    grown = cfg.model_copy(update={"model": cfg.model.model_copy(update={"row_channel": True})})
    with pytest.raises(ConfigError, match="model.row_channel: True here, False in the source"):
        check_architecture(open_run(old), grown)
