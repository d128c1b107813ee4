"""The run directory: creation, refusals, config compatibility, status and manifest."""

from __future__ import annotations

import json

import pytest

from segmenter.config import load_config
from segmenter.errors import RunError
from segmenter.runs import config_differences, open_run
from segmenter.training.plan import RunPlan, prepare_run


def test_new_run_writes_config_and_existing_run_is_refused(tmp_path):
    cfg = load_config(None, ["train.steps=7"])
    run = prepare_run(RunPlan(tmp_path / "run", cfg, [32]))
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert open_run(tmp_path / "run").config == cfg
    with pytest.raises(RunError, match="run exists; use --resume .* or --overwrite"):
        prepare_run(RunPlan(run.path, cfg, [32]))
    assert prepare_run(RunPlan(run.path, cfg, [32], resume=True)).path == run.path
    run.write_status(32, {"status": "running"})
    prepare_run(RunPlan(run.path, cfg, [32, 64], overwrite=True))
    assert not (run.path / "history").exists()


def test_a_fine_tune_resumes_with_its_source_at_another_path_but_not_without_one():
    tuned = load_config(None, ["train.init_from=/runs/base"])
    moved = load_config(None, ["train.init_from=/mnt/other/base"])
    assert config_differences(tuned, moved) == []
    assert config_differences(tuned, load_config(None)) == ["train.init_from"]
    assert config_differences(load_config(None), tuned) == ["train.init_from"]


def test_resume_with_an_incompatible_config_names_the_keys(tmp_path):
    cfg = load_config(None)
    prepare_run(RunPlan(tmp_path, cfg, [32]))
    other = load_config(None, ["train.learning_rate=0.01", "model.filters=8",
                               "train.widths={32: 7}", "train.strategy=mirrored"])
    with pytest.raises(RunError) as info:
        prepare_run(RunPlan(tmp_path, other, [32], resume=True))
    message = str(info.value)
    assert "model.filters, train.learning_rate, train.widths.32" in message
    assert "strategy" not in message


def test_separate_width_jobs_share_a_run(tmp_path):
    cfg = load_config(None)
    first = prepare_run(RunPlan(tmp_path / "r", cfg, [32], partial=True))
    first.write_status(32, {"status": "running"})
    second = prepare_run(RunPlan(tmp_path / "r", cfg, [64], partial=True))
    second.write_status(64, {"status": "running"})
    with pytest.raises(RunError, match="widths 32 already started"):
        prepare_run(RunPlan(tmp_path / "r", cfg, [32], partial=True))
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert set(manifest["widths"]) == {"32", "64"}
    assert manifest["versions"]["tensorflow"]


def test_non_run_folder_and_missing_runs_are_refused(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(RunError, match="not empty and is not a segmenter run"):
        prepare_run(RunPlan(tmp_path, load_config(None), [32]))
    with pytest.raises(RunError, match="run directory not found"):
        open_run(tmp_path / "nope")
    with pytest.raises(RunError, match="no config.yaml"):
        open_run(tmp_path)
    with pytest.raises(RunError, match="cannot create run directory"):
        prepare_run(RunPlan(tmp_path / "stuff.txt" / "run", load_config(None), [32]))


def test_finished_widths_and_scores_come_from_status_files(tmp_path):
    run = prepare_run(RunPlan(tmp_path, load_config(None), [32, 64]))
    run.write_status(32, {"status": "finished", "final_val_water_iou": 0.8})
    run.write_status(64, {"status": "running"})
    run.model_path(32).parent.mkdir()
    run.model_path(32).write_bytes(b"")
    assert run.finished_widths() == [32]
    assert run.val_score(32) == pytest.approx(0.8)
    assert run.val_score(64) is None
    with pytest.raises(RunError, match="no finished model for patch width 64"):
        run.load_model(64)
    rows = [{"step": 3, "loss": 0.5, "val_loss": None, "val_water_iou": None, "seconds": 1.0}]
    run.write_history(32, rows)
    assert run.read_history(32)[0]["loss"] == 0.5
    assert run.read_history(32)[0]["val_loss"] is None


def test_config_differences_ignore_execution_keys():
    base = load_config(None)
    assert config_differences(base, load_config(None, ["train.jit_compile=true"])) == []
    assert config_differences(base, load_config(None, ["data.scale=0.25"])) == ["data.scale"]


def test_a_plan_is_checked_without_touching_the_disk_then_applied(tmp_path):
    """--overwrite: check() decides and changes nothing (train loads the data in between);
    apply() then removes training's files only."""
    cfg = load_config(None)
    run = prepare_run(RunPlan(tmp_path / "r", cfg, [32]))
    run.write_status(32, {"status": "finished", "data_fingerprint": "abc"})
    (run.path / "notes.txt").write_text("mine")
    checked = RunPlan(run.path, cfg, [32], overwrite=True).check()
    assert checked.action == "restart" and checked.kept_statuses() == {}
    assert run.status_path(32).is_file()  # nothing removed yet
    restarted = checked.apply()
    assert not run.status_path(32).exists() and (run.path / "notes.txt").is_file()
    # --patch-width 64 joining: width 32's status (and its fingerprint) stays.
    restarted.write_status(32, {"status": "finished", "data_fingerprint": "abc"})
    joining = RunPlan(run.path, cfg, [64], partial=True).check()
    assert joining.action == "continue"
    assert {w: s.data_fingerprint for w, s in joining.kept_statuses().items()} == {32: "abc"}
    with pytest.raises(RunError, match="cannot be used together"):
        RunPlan(run.path, cfg, [32], resume=True, overwrite=True).check()


def test_run_state_is_typed_and_a_malformed_status_file_is_named(tmp_path):
    from segmenter.runstate import Manifest, WidthStatus

    run = prepare_run(RunPlan(tmp_path, load_config(None), [32]))
    run.write_status(32, WidthStatus(status="interrupted", steps_done=20, steps=100,
                                     batch_size=4, data_fingerprint="f00"))
    status = run.status(32)
    assert isinstance(status, WidthStatus) and status.width == 32 and status.steps_done == 20
    manifest = Manifest.model_validate_json((tmp_path / "manifest.json").read_text())
    assert manifest.widths["32"].status == "interrupted" and manifest.data_fingerprint == "f00"
    run.status_path(32).write_text('{"status": "exploded", "steps_done": 3}')
    with pytest.raises(RunError, match=r"pw32\.json: unreadable run file \(status: Input "
                                       r"should be 'running', 'finished', 'failed' or "
                                       r"'interrupted'\)"):
        run.status(32)


def test_a_fresh_process_loads_a_saved_model_with_its_custom_layers(tmp_path):
    """Loading registers segmenter's layers itself: a process that imported nothing of the
    network (a Dask worker, a script) still loads a run's models with safe_mode."""
    import subprocess
    import sys

    from helpers import make_run

    run = make_run(tmp_path / "run", widths=(16,))
    code = ("import sys\n"
            "from segmenter.runs import open_run\n"
            "assert 'segmenter.model.network' not in sys.modules\n"
            "model = open_run(sys.argv[1]).load_model(16)\n"
            "print(type(model.layers[1]).__module__, model.output_shape)\n")
    done = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1].startswith("1)")  # (None, None, None, 1)
