"""Smoke test of scripts/bench_quality.py's split and peers on a tiny generated photo.

The benchmark itself trains for minutes on a 5008 x 2504 photo; this only checks, in seconds,
that the split is fixed and never overlaps, that the split folders load through segmenter's own
loaders with the label intact, and that every peer yields a full-size mask and sane scores.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def _scene(height: int = 48, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured land with two dark smooth ponds, one in each part of the split."""
    rng = np.random.default_rng(0)
    image = 0.55 + 0.15 * rng.random((height, width, 3))
    yy, xx = np.mgrid[:height, :width]
    water = ((yy - 24) ** 2 + (xx - 30) ** 2 < 14**2) | ((yy - 24) ** 2 + (xx - 95) ** 2 < 12**2)
    image[water] = [0.15, 0.25, 0.3]
    return image.astype(np.float32), (~water).astype(np.float32)


def _write_real(bench, folder: Path) -> None:
    image, land = _scene()
    bench.write_ontario(folder, "train", "tiny", bench.Part("all", (0, 120), image, land))


def test_load_real_reads_through_segmenter_and_refuses_missing(bench, tmp_path):
    _write_real(bench, tmp_path / "real")
    stem, image, land = bench.load_real(tmp_path / "real")
    ref_image, ref_land = _scene()
    assert stem == "tiny"
    assert np.abs(image - ref_image).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(land, ref_land)
    with pytest.raises(SystemExit, match="real photo not found"):
        bench.load_real(tmp_path / "absent")


@pytest.mark.parametrize("split", ["final", "tune"])
def test_split_is_fixed_and_scored_part_never_fitted(bench, split):
    ranges = bench.column_ranges(5008, split)
    fit, score = ranges["fit"], ranges["score"]
    assert fit[0] == 0 and fit[1] <= score[0] and score[1] <= 5008
    assert ranges["monitor"][1] <= round(bench.TRAIN_FRACTION * 5008)
    if split == "final":
        assert fit == (0, 3005) and score == (3005, 5008)
    else:  # tuning never touches the validation part
        assert score[1] <= 3005


def test_sources_load_and_peers_score(bench, tmp_path):
    from segmenter.config import DataConfig
    from segmenter.data import ontario

    image, land = _scene()
    train_src, val_src, parts = bench.prepare_sources(tmp_path, "tiny", image, land, "final")
    train = ontario.load_dataset(DataConfig(source=str(train_src)), scale=1.0, progress=False)
    assert [item.stem for item in train.train] == ["tiny_fit"]
    assert [item.stem for item in train.test] == ["tiny_monitor"]
    np.testing.assert_array_equal(train.train[0].land, land[:, :72])
    val = ontario.load_dataset(DataConfig(source=str(val_src)), scale=1.0, progress=False)
    scored = val.train + val.test
    assert [item.stem for item in scored] == ["tiny_score"]
    np.testing.assert_array_equal(scored[0].land, land[:, 72:])

    rows = bench.run_peers(parts["fit"], parts["score"], scale=1.0)
    assert [row.method for row in rows] == list(bench.PEERS)
    by_name = {row.method: row for row in rows}
    for row in rows:
        assert set(row.scores) >= {"water_iou", "mean_iou", "f1", "accuracy"}
        assert all(0.0 <= v <= 1.0 for v in row.scores.values())
    # On this easy scene the pond is darker: Otsu picks the dark side and finds it.
    assert by_name["Otsu on grey"].scores["water_iou"] > 0.9
    table = bench.format_table(rows)
    assert "Otsu on grey" in table and "water IoU" in table


def test_upsample_mask_keeps_blocks(bench):
    small = np.array([[True, False], [False, True]])
    big = bench._upsample_mask(small, (4, 6))
    assert big.shape == (4, 6)
    assert big[:2, :3].all() and not big[:2, 3:].any() and big[2:, 3:].all()
