"""The tf.data patch pipeline: real cuts, determinism by step, augmentation, skipping."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tiny_data import Item, scene

from segmenter.config import AugmentConfig
from segmenter.data.pipeline import eligible_images, training_dataset, validation_patches
from segmenter.errors import DataError

NO_AUGMENT = AugmentConfig(flip=False, rotate90=False, brightness=0.0, contrast=0.0)


def _items():
    rng = np.random.default_rng(0)
    return [
        Item(f"s{i}", rng.random((h, w, 3), dtype=np.float32),
             (rng.random((h, w)) > 0.5).astype(np.float32))
        for i, (h, w) in enumerate([(20, 30), (36, 16), (24, 24)])
    ]


def _locate(items, patch, land, width):
    """Whether (patch, land) is a cut of some item, possibly flipped/rotated."""
    variants = []
    for k in range(4):
        for flip in (False, True):
            p, lab = np.rot90(patch, k), np.rot90(land[..., 0], k)
            if flip:
                p, lab = p[:, ::-1], lab[:, ::-1]
            variants.append((p, lab))
    for item in items:
        height, wide = item.land.shape
        for top in range(height - width + 1):
            for left in range(wide - width + 1):
                cut = item.image[top : top + width, left : left + width]
                for p, lab in variants:
                    if np.array_equal(cut, p):
                        return np.array_equal(item.land[top : top + width, left : left + width],
                                              lab)
    return False


def test_patches_are_true_cuts_of_image_and_label():
    items = _items()
    images, lands = next(iter(training_dataset(items, 16, 6, seed=3, steps=1,
                                               augment=NO_AUGMENT)))
    assert images.shape == (6, 16, 16, 3) and lands.shape == (6, 16, 16, 1)
    assert all(_locate(items, images[i].numpy(), lands[i].numpy(), 16) for i in range(6))


def test_geometric_augmentation_keeps_image_and_label_aligned():
    items = _items()
    augment = AugmentConfig(flip=True, rotate90=True, brightness=0.0, contrast=0.0)
    images, lands = next(iter(training_dataset(items, 16, 8, seed=1, steps=1, augment=augment)))
    assert all(_locate(items, images[i].numpy(), lands[i].numpy(), 16) for i in range(8))


def test_same_step_same_patches_whatever_the_start():
    items = _items()
    full = [b[0] for b in training_dataset(items, 16, 4, seed=5, steps=4,
                                          augment=AugmentConfig()).as_numpy_iterator()]
    tail = [b[0] for b in training_dataset(items, 16, 4, seed=5, start_step=2, steps=4,
                                          augment=AugmentConfig()).as_numpy_iterator()]
    other = next(training_dataset(items, 16, 4, seed=6, steps=1).as_numpy_iterator())[0]
    assert len(full) == 4 and len(tail) == 2
    np.testing.assert_array_equal(full[2], tail[0])
    np.testing.assert_array_equal(full[3], tail[1])
    assert not np.array_equal(full[0], other)


def test_photometric_augmentation_stays_in_range():
    augment = AugmentConfig(flip=False, rotate90=False, brightness=0.5, contrast=0.5)
    images, _ = next(iter(training_dataset(_items(), 16, 16, seed=0, steps=1, augment=augment)))
    assert float(images.numpy().min()) >= 0.0 and float(images.numpy().max()) <= 1.0


def test_small_images_are_skipped_with_a_warning_and_none_left_is_an_error(caplog):
    items = _items()
    with caplog.at_level(logging.WARNING):
        kept = eligible_images(items, 24, "train")
    assert [i.stem for i in kept] == ["s2"]
    assert "patch width 24: skipping 2 train image(s) smaller than the patch" in caplog.text
    with pytest.raises(DataError, match="patch width 32"):
        training_dataset(items, 32, 2, steps=1)


def test_validation_patches_are_fixed_by_seed():
    items = [scene(0, 32), scene(1, 32)]
    first = validation_patches(items, 16, 4, 2, seed=0)
    again = validation_patches(items, 16, 4, 2, seed=0)
    assert len(first) == 2 and first[0][0].shape == (4, 16, 16, 3)
    assert first[1][1].shape == (4, 16, 16, 1)
    for (a, b), (c, d) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert validation_patches(items, 64, 4, 2) == []
