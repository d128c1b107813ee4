"""The built-in sample: dry inland scenes beside the shore and pond scenes."""

import numpy as np
from scipy.io import loadmat

from segmenter.data.sample import DRY_EVERY, is_dry, make_scene, write_sample


def test_one_scene_in_eight_is_dry_and_the_others_hold_water():
    dry = [i for i in range(2 * DRY_EVERY) if is_dry(i)]
    assert dry == [DRY_EVERY - 2, 2 * DRY_EVERY - 2]
    for index in range(2 * DRY_EVERY):
        scene = make_scene(index, 128, seed=0)
        if index in dry:
            assert not scene.water.any()
            # An inland scene still has the dark canopy and shadows that look like water.
            assert (scene.image.mean(axis=2) < 50).mean() > 0.05
        else:
            assert 0.1 < scene.water.mean() < 0.45, index


def test_written_sample_holds_a_dry_scene_in_train_and_in_test(tmp_path):
    counts = write_sample(tmp_path / "sample", n=16, size=96, seed=0)
    assert counts["train"] == 12 and counts["test"] == 4
    for split, stem in (("train", "scene_006"), ("test", "scene_014")):
        classes = loadmat(tmp_path / "sample" / split / f"{stem}_mres.mat")["class"]
        assert classes.shape == (72, 96) and (classes == 1).all()
    wet = loadmat(tmp_path / "sample" / "train" / "scene_005_mres.mat")["class"]
    assert (wet == 2).any()
