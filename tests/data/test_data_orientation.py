"""data.upright: oblique photos keep their up; ``auto`` decides from the training labels."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import TINY_SETTINGS, Item, TinyDataset, scene

from segmenter.cli.options import resolve_config
from segmenter.config import load_config
from segmenter.data.orientation import MIN_PHOTOS, detect_upright, with_row_channel
from segmenter.errors import ConfigError, RunError
from segmenter.model.introspect import input_channels
from segmenter.predict.photo import predict_land
from segmenter.runs import open_run
from segmenter.training import train


def horizon(index: int, size: int = 40) -> Item:
    """An oblique view: sky and shore above, water in the lower part (the tiny scene turned)."""
    item = scene(index, size)
    image = np.ascontiguousarray(np.rot90(item.image))  # the left water band -> the bottom
    land = np.ascontiguousarray(np.rot90(item.land))
    return Item(f"horizon{index}", image, land)


def aerial(index: int, size: int = 40) -> Item:
    """A top-down view: three ponds anywhere in the photo, as likely high as low."""
    rng = np.random.default_rng(index)
    land = np.ones((size, size), np.float32)
    for _ in range(3):
        row, col = rng.integers(0, size, 2)
        land[max(0, row - 6) : row + 6, max(0, col - 6) : col + 6] = 0.0
    image = rng.random((size, size, 3), dtype=np.float32) * 0.3
    image[..., 2] += (1 - land) * 0.5
    return Item(f"aerial{index}", image, land)


def test_photos_with_a_horizon_are_upright_and_aerial_ones_are_not():
    seen = detect_upright([horizon(i) for i in range(MIN_PHOTOS)])
    assert seen.upright and seen.photos == MIN_PHOTOS
    assert seen.top_share == 0.0 and seen.rest_share > 0.3
    assert "upright (oblique photos with a horizon)" in seen.describe()
    # The same photos upside down: water on top is no horizon.
    flipped = [Item(i.stem, i.image[::-1], i.land[::-1]) for i in (horizon(k) for k in range(6))]
    assert not detect_upright(flipped).upright
    # Ponds anywhere: the top quarter holds about the photo's share of water.
    assert not detect_upright([aerial(i) for i in range(16)]).upright
    assert "aerial" in detect_upright([aerial(i) for i in range(16)]).describe()


def test_too_few_photos_with_water_stay_aerial():
    few = detect_upright([horizon(i) for i in range(MIN_PHOTOS - 1)])
    assert not few.upright and "too few to tell" in few.describe()
    dry = Item("dry", np.zeros((40, 40, 3), np.float32), np.ones((40, 40), np.float32))
    assert detect_upright([dry] * 10).photos == 0 and not detect_upright([dry] * 10).upright


def test_training_with_auto_saves_its_decision_and_resuming_keeps_it(tmp_path, caplog):
    data = TinyDataset(train=[horizon(i) for i in range(MIN_PHOTOS)], test=[horizon(10)])
    cfg = load_config(None, [*TINY_SETTINGS, "data.upright=auto"])
    with caplog.at_level(logging.INFO, logger="segmenter"):
        results = train(cfg, tmp_path / "run", dataset=data)
    assert [r.status for r in results] == ["finished"]
    assert "data.upright auto: upright (oblique photos with a horizon)" in caplog.text
    run = open_run(tmp_path / "run")
    assert run.config.data.upright is True  # predict reads the decision from the run
    # model.row_channel: auto follows the decision: the networks also read each pixel's row.
    assert run.config.model.row_channel is True
    assert "model.row_channel: the networks also read each pixel's row" in caplog.text
    model = run.load_model(16)
    assert input_channels(model) == 4
    photo = horizon(11).image
    land = predict_land({16: model}, photo, run.config).land_prob
    assert land.shape == photo.shape[:2] and np.isfinite(land).all()
    # The same run resumed (or predicted) with auto in the config keeps the saved decision.
    again = train(cfg, tmp_path / "run", resume=True, dataset=data)
    assert [r.status for r in again] == ["skipped"]  # accepted; the width was already done
    with pytest.raises(RunError, match="config differs in data.upright"):
        train(load_config(None, [*TINY_SETTINGS, "data.upright=false"]), tmp_path / "run",
              resume=True, dataset=data)
    assert open_run(tmp_path / "run").config.data.upright is True
    assert resolve_config(None, ("data.upright=auto",), base=run.config).data.upright is True
    assert resolve_config(None, ("data.upright=false",), base=run.config).data.upright is False

    aerial_data = TinyDataset(train=[aerial(i) for i in range(8)], test=[aerial(20)])
    train(cfg, tmp_path / "aerial", dataset=aerial_data)
    aerial_run = open_run(tmp_path / "aerial")
    assert aerial_run.config.data.upright is False
    assert aerial_run.config.model.row_channel is False
    assert input_channels(aerial_run.load_model(16)) == 3


def test_row_channel_follows_upright_and_refuses_photos_without_an_up():
    upright = load_config(None, ["data.upright=true"])
    aerial_cfg = load_config(None, ["data.upright=false"])
    assert with_row_channel(upright).model.row_channel is True
    assert with_row_channel(aerial_cfg).model.row_channel is False
    off = load_config(None, ["data.upright=true", "model.row_channel=false"])
    assert with_row_channel(off).model.row_channel is False
    with pytest.raises(ConfigError, match=r"model.row_channel: true needs upright photos"):
        with_row_channel(load_config(None, ["data.upright=false", "model.row_channel=true"]))
    # A continued run keeps what its models were built with; a run saved before the key
    # existed (auto in its config) has no row channel.
    saved_old = load_config(None, ["data.upright=true"])
    assert with_row_channel(upright, saved_old).model.row_channel is False
    saved_on = with_row_channel(upright)
    assert with_row_channel(upright, saved_on).model.row_channel is True


def test_a_bad_upright_value_names_the_key():
    with pytest.raises(ConfigError, match="data.upright"):
        load_config(None, ["data.upright=sideways"])
