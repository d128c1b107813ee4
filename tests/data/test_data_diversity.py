"""Warnings about training data that cannot generalise: too few photos, one water colour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segmenter.data.diversity import diversity_warnings, water_colours


@dataclass
class _Item:
    stem: str
    image: np.ndarray
    land: np.ndarray


def _photo(stem: str, water_rgb, land_rgb=(0.3, 0.5, 0.2)) -> _Item:
    land = np.ones((20, 20), np.float32)
    land[:, :8] = 0.0
    image = np.empty((20, 20, 3), np.float32)
    image[:] = land_rgb
    image[:, :8] = water_rgb
    return _Item(stem, image, land)


def test_one_photo_is_named_as_too_few():
    lines = diversity_warnings([_photo("a", (0.1, 0.2, 0.4))])
    assert len(lines) == 1 and lines[0].startswith("only 1 training photo:")
    assert lines[0].endswith("or at least turn some patches grey (train.augment.greyscale, "
                             "0.3 in photo.yaml)")
    # grey patches already on: the advice is not to turn them on
    grey = diversity_warnings([_photo("a", (0.1, 0.2, 0.4))], greyscale=0.3)
    assert grey[0].endswith("(water colour, light, site); grey patches (train.augment."
                            "greyscale 0.3) help but do not replace them")


def test_one_water_colour_across_photos_is_warned_and_varied_water_is_not():
    same = [_photo(f"p{i}", (0.40 + 0.005 * i, 0.38, 0.33)) for i in range(4)]
    lines = diversity_warnings(same)
    assert len(lines) == 1 and "nearly one colour" in lines[0] and "all 4" in lines[0]
    assert lines[0].endswith("glinting), or at least turn some patches grey "
                             "(train.augment.greyscale, 0.3 in photo.yaml)")
    assert "turn some" not in diversity_warnings(same, greyscale=0.3)[0]
    varied = [_photo("navy", (0.05, 0.1, 0.3)), _photo("brown", (0.45, 0.38, 0.25)),
              _photo("green", (0.2, 0.35, 0.25)), _photo("grey", (0.5, 0.5, 0.5))]
    assert diversity_warnings(varied) == []
    assert set(water_colours(varied)) == {"navy", "brown", "green", "grey"}


def test_no_water_at_all_is_warned():
    dry = [_Item(f"d{i}", np.full((8, 8, 3), 0.4, np.float32), np.ones((8, 8), np.float32))
           for i in range(3)]
    assert diversity_warnings(dry) == ["no training photo has any water: the models can only "
                                       "learn land"]
    assert diversity_warnings([]) == []


def test_the_built_in_sample_draws_no_warning():
    from segmenter.data.sample import make_scene

    items = []
    for index in range(12):
        scene = make_scene(index, 128, 0)
        items.append(_Item(scene.stem, scene.image / 255.0, (~scene.water).astype(np.float32)))
    assert diversity_warnings(items) == []
