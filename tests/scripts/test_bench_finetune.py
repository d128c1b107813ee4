"""scripts/bench_finetune.py: which photos of the new flights are labelled, scored or dropped.

The fine-tuning itself is ``segmenter train --init-from`` (tests/training/test_warmstart.py);
these check in seconds that no scored photo is a labelled one or was taken seconds from one, and
that the tuning source holds the base run's photos only when asked.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("bench_finetune",
                                                  REPO / "scripts" / "bench_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shot_time_reads_both_obx_name_forms(bench):
    assert bench.shot_time("2018-10-07_20.15.44-DSC02461-N7251F") == datetime(
        2018, 10, 7, 20, 15, 44)
    assert bench.shot_time("2018-1008-193001-DSC09735-N7251F") == datetime(
        2018, 10, 8, 19, 30, 1)
    with pytest.raises(bench.bq.BenchError, match="type1_001: no date and time"):
        bench.shot_time("type1_001")


def test_split_keeps_scored_photos_away_from_labelled_ones(bench):
    # Ten photos a minute apart, out of order and in both name forms.
    stems = [f"2018-10-07_20.{m:02d}.00-DSC" if m % 2 else f"2018-1007-20{m:02d}00-DSC"
             for m in range(10)]
    pairs = [SimpleNamespace(stem=s) for s in reversed(stems)]
    train, validation, scored, dropped = bench.split_new_flight(pairs, 3, gap=90)
    minute = {p.stem: bench.shot_time(p.stem).minute for p in pairs}
    assert [minute[p.stem] for p in train] == [0, 9]  # evenly in time: 0, (4 or 5), 9
    assert minute[validation.stem] in (4, 5)
    labelled = {0, 9, minute[validation.stem]}
    assert all(min(abs(minute[p.stem] - m) for m in labelled) > 1.5 for p in scored)
    assert all(min(abs(minute[p.stem] - m) for m in labelled) <= 1.5 for p in dropped)
    assert len(train) + 1 + len(scored) + len(dropped) == 10
    with pytest.raises(bench.bq.BenchError, match="--labelled 10: choose 2 to 9"):
        bench.split_new_flight(pairs, 10, gap=90)


@pytest.mark.parametrize("with_base", [False, True])
def test_tuning_source_holds_the_base_photos_only_when_asked(bench, tmp_path, with_base):
    bq = bench.bq
    image = np.full((20, 30, 3), 0.5, np.float32)
    land = np.ones((20, 30), np.float32)
    land[:, :10] = 0.0
    part = bq.Part("all", (0, 30), image, land)
    for minute in range(6):
        bq.write_ontario(tmp_path / "obx", "test", f"2018-10-07_20.{minute * 5:02d}.00-X", part)
    for sub in ("train", "test"):
        bq.write_ontario(tmp_path / "base", sub, f"old_{sub}", part)
    tune, scored, _, line = bench.prepare(tmp_path / "obx", tmp_path / "base",
                                          tmp_path / "work", labelled=2, gap=60,
                                          with_base=with_base,
                                          real_dir=None)

    def stems(folder: Path) -> set[str]:
        return {p.stem for p in folder.glob("*.png")}

    old = {"old_train"} if with_base else set()
    assert stems(tune / "train") == {"2018-10-07_20.00.00-X"} | old
    assert stems(tune / "test") == {"2018-10-07_20.25.00-X"} | ({"old_test"} if with_base
                                                                 else set())
    assert stems(scored / "train") == {f"2018-10-07_20.{m:02d}.00-X" for m in (5, 10, 15, 20)}
    assert "scored 4, dropped 0" in line
