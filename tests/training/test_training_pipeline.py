"""The patch pipeline: real cuts, determinism by step, augmentation, skipping, on every backend."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import Item, scene

from segmenter.config import AugmentConfig
from segmenter.errors import DataError
from segmenter.training.pipeline import (
    PatchSource,
    eligible_images,
    training_dataset,
    validation_patches,
)

pytestmark = pytest.mark.backend  # run again on JAX by the test command

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
    assert all(_locate(items, np.asarray(images[i]), np.asarray(lands[i]), 16) for i in range(6))


def test_geometric_augmentation_keeps_image_and_label_aligned():
    items = _items()
    augment = AugmentConfig(flip=True, rotate90=True, brightness=0.0, contrast=0.0)
    images, lands = next(iter(training_dataset(items, 16, 8, seed=1, steps=1, augment=augment)))
    assert all(_locate(items, np.asarray(images[i]), np.asarray(lands[i]), 16) for i in range(8))


def _orientation(item, patch, width):
    """'as is' or 'mirrored' if ``patch`` is a cut of ``item`` kept upright, else None."""
    height, wide = item.land.shape
    for top in range(height - width + 1):
        for left in range(wide - width + 1):
            cut = item.image[top : top + width, left : left + width]
            if np.array_equal(cut, patch):
                return "as is"
            if np.array_equal(cut[:, ::-1], patch):
                return "mirrored"
    return None


def test_upright_photos_are_only_mirrored_left_right():
    # One photo of unique pixels, so a patch's orientation is unambiguous.
    rng = np.random.default_rng(1)
    item = Item("u", rng.random((24, 24, 3), dtype=np.float32),
                (rng.random((24, 24)) > 0.5).astype(np.float32))
    augment = AugmentConfig(flip=True, rotate90=True, brightness=0.0, contrast=0.0)
    images, _ = next(iter(training_dataset([item], 16, 32, seed=2, steps=1, augment=augment,
                                           upright=True)))
    seen = [_orientation(item, np.asarray(images[i]), 16) for i in range(32)]
    assert None not in seen  # never upside down, never turned
    assert {"as is", "mirrored"} == set(seen)
    # Without upright, the same draw turns some patches.
    images, _ = next(iter(training_dataset([item], 16, 32, seed=2, steps=1, augment=augment)))
    assert None in [_orientation(item, np.asarray(images[i]), 16) for i in range(32)]


def _ramp_item(height, wide):
    """A photo whose red is the row and green the column (in pixels / 1000), land left of 40."""
    rows, cols = np.mgrid[0:height, 0:wide].astype(np.float32)
    image = np.stack([rows / 1000, cols / 1000, np.full_like(rows, 0.5)], axis=-1)
    return Item("ramp", image, (cols < 40).astype(np.float32))


def test_zoom_resamples_patches_at_random_scales_with_labels_that_follow():
    item = _ramp_item(120, 160)
    augment = AugmentConfig(flip=True, rotate90=False, brightness=0.0, contrast=0.0, scale=0.5)
    images, lands = (np.asarray(a) for a in next(iter(training_dataset(
        [item], 16, 64, seed=4, steps=1, augment=augment))))
    red, green = images[..., 0] * 1000, images[..., 1] * 1000
    # Photo pixels per patch pixel: the same down and across, between 1/1.5 and 1.5.
    down = np.abs(np.diff(red, axis=1)).mean(axis=(1, 2))
    across = np.abs(np.diff(green, axis=2)).mean(axis=(1, 2))
    np.testing.assert_allclose(down, across, atol=1e-3)
    assert down.min() >= 1 / 1.5 - 1e-3 and down.max() <= 1.5 + 1e-3
    assert down.min() < 0.85 and down.max() > 1.15  # both ways, not one fixed zoom
    assert red.min() >= 0 and red.max() <= 119 and green.min() >= 0 and green.max() <= 159
    # The label is resampled with the photo: land left of column 40, soft only at the shore.
    land = lands[..., 0]
    np.testing.assert_array_equal(land[green <= 39], 1.0)
    np.testing.assert_array_equal(land[green >= 40], 0.0)
    # Same step, same zoom.
    again = next(iter(training_dataset([item], 16, 64, seed=4, steps=1, augment=augment)))
    np.testing.assert_array_equal(images, np.asarray(again[0]))


def test_zoom_never_reaches_outside_a_photo_just_the_patch_size():
    item = _ramp_item(16, 16)
    augment = AugmentConfig(flip=False, rotate90=False, brightness=0.0, contrast=0.0, scale=1.0)
    images = next(iter(training_dataset([item], 16, 32, seed=0, steps=1, augment=augment)))[0]
    down = np.diff(np.asarray(images)[..., 0] * 1000, axis=1).mean(axis=(1, 2))
    assert down.max() <= 1.0 + 1e-4 and down.min() < 0.75  # zoomed in, never out


def test_tilt_turns_the_scene_in_each_patch_while_the_row_channel_keeps_the_camera_s_rows():
    """augment.tilt: a camera rolled about its axis. The patch samples the photo along turned
    axes (angles both ways, never beyond the limit, never outside the photo), the label turns
    with it, and the row channel is the rolled camera's row: level in the patch while the
    scene slopes."""
    height, wide = 120, 160
    item = _ramp_item(height, wide)
    augment = AugmentConfig(flip=True, rotate90=False, brightness=0.0, contrast=0.0, tilt=30.0)
    source = PatchSource.from_images([item], row_channel=True)
    images, lands = (np.asarray(a) for a in next(iter(training_dataset(
        source, 32, 64, seed=3, steps=1, augment=augment, upright=True))))
    red, green, rows = images[..., 0] * 1000, images[..., 1] * 1000, images[..., 3] * (height - 1)
    # Photo row and column along the patch's rows and columns: a turn by one angle per patch,
    # one photo pixel per patch pixel (no zoom), and exactly linear, so nothing was clipped.
    i, j = np.mgrid[0:32, 0:32].astype(np.float64)
    design = np.stack([np.ones(32 * 32), i.ravel(), j.ravel()], axis=1)
    angles = []
    for k in range(64):
        (_, red_i, red_j), res_r, *_ = np.linalg.lstsq(design, red[k].ravel(), rcond=None)
        (_, green_i, green_j), res_g, *_ = np.linalg.lstsq(design, green[k].ravel(), rcond=None)
        assert res_r[0] < 1e-3 and res_g[0] < 1e-3
        # (a left-right flip mirrors the columns: the column step changes sign)
        np.testing.assert_allclose([red_i, abs(green_j)], np.cos(np.arctan2(green_i, red_i)),
                                   atol=1e-3)
        np.testing.assert_allclose(np.hypot(red_i, green_i), 1.0, atol=1e-3)
        angles.append(np.degrees(np.arctan2(green_i, red_i)))
    angles = np.abs(np.asarray(angles))
    assert angles.max() <= 30 + 1e-2 and angles.max() > 20 and angles.min() < 10
    assert red.min() >= 0 and red.max() <= height - 1
    assert green.min() >= 0 and green.max() <= wide - 1
    # The label turns with the photo: land left of column 40, soft only at the shore.
    np.testing.assert_array_equal(lands[..., 0][green <= 39], 1.0)
    np.testing.assert_array_equal(lands[..., 0][green >= 40], 0.0)
    # The row channel: one value per patch row, one photo row further per patch row...
    np.testing.assert_allclose(np.diff(rows, axis=2), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.diff(rows, axis=1), 1.0, atol=1e-3)
    # ...and it is the row, in the rolled camera's frame, of the photo point each pixel shows.
    theta = np.arctan2(np.gradient(green, axis=1).mean(axis=(1, 2)),
                       np.gradient(red, axis=1).mean(axis=(1, 2)))
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    rolled = (height / 2 + cos * (red + 0.5 - height / 2) + sin * (green + 0.5 - wide / 2) - 0.5)
    np.testing.assert_allclose(rows, rolled, atol=2e-2)
    # Same step, same turns; without tilt the rows are the photo's own again.
    again = np.asarray(next(iter(training_dataset(source, 32, 64, seed=3, steps=1, augment=augment,
                                       upright=True)))[0])
    np.testing.assert_array_equal(images, again)
    level = np.asarray(next(iter(training_dataset(
        source, 32, 64, seed=3, steps=1, upright=True,
        augment=augment.model_copy(update={"tilt": 0.0}))))[0])
    np.testing.assert_allclose(level[..., 3] * (height - 1), level[..., 0] * 1000, atol=2e-3)


def test_tilt_shrinks_the_footprint_to_fit_a_photo_just_the_patch_size():
    item = _ramp_item(32, 32)
    augment = AugmentConfig(flip=False, rotate90=False, brightness=0.0, contrast=0.0, tilt=45.0)
    images = next(iter(training_dataset([item], 32, 16, seed=0, steps=1, augment=augment)))[0]
    red = np.asarray(images)[..., 0] * 1000
    assert red.min() >= 0 and red.max() <= 31
    # Turned patches cover less than their width of photo pixels: zoomed in to fit.
    step = np.hypot(np.gradient(red, axis=1), np.gradient(red, axis=2)).mean(axis=(1, 2))
    assert step.max() <= 1.0 + 1e-3 and step.min() < 0.8


@pytest.mark.parametrize("zoom", [0.0, 0.5])
def test_row_channel_is_each_pixel_s_row_in_its_photo(zoom):
    """model.row_channel: a fourth channel, the pixel's row / (height - 1), through zoom and
    mirroring, never touched by the colour augmentation."""
    item = _ramp_item(120, 160)  # red = row / 1000
    augment = AugmentConfig(flip=True, rotate90=True, brightness=0.2, contrast=0.2, scale=zoom)
    source = PatchSource.from_images([item], row_channel=True)
    assert source.row_channel and source.pixels.shape == (120 * 160, 5)
    images = np.asarray(next(iter(training_dataset(source, 16, 32, seed=5, steps=1, augment=augment,
                                        upright=True)))[0])
    assert images.shape == (32, 16, 16, 4)
    rows = images[..., 3] * 119
    assert rows.min() >= -1e-3 and rows.max() <= 119 + 1e-3
    # Where the photo is: red is the row too, unless brightness/contrast moved it.
    plain = np.asarray(next(iter(training_dataset(
        source, 16, 32, seed=5, steps=1, upright=True,
        augment=augment.model_copy(update={"brightness": 0.0, "contrast": 0.0}))))[0])
    np.testing.assert_allclose(plain[..., 3] * 119, plain[..., 0] * 1000, atol=2e-3)
    np.testing.assert_allclose(images[..., 3], plain[..., 3])  # colour changes leave it
    np.testing.assert_allclose(np.diff(rows, axis=2), 0.0, atol=1e-4)  # one value per row
    assert (np.diff(rows, axis=1) > 0).all()  # and it grows downwards: never upside down
    # Patches that may be turned have no row to give: refused.
    with pytest.raises(ValueError, match="row channel needs upright patches"):
        training_dataset(source, 16, 4, steps=1, augment=augment)
    val = validation_patches([item], 16, 4, 1, seed=0, row_channel=True)[0][0]
    assert val.shape == (4, 16, 16, 4)
    np.testing.assert_allclose(val[..., 3] * 119, val[..., 0] * 1000, atol=2e-3)


def test_same_step_same_patches_whatever_the_start():
    items = _items()
    full = [np.asarray(b[0]) for b in training_dataset(items, 16, 4, seed=5, steps=4,
                                                      augment=AugmentConfig())]
    tail = [np.asarray(b[0]) for b in training_dataset(items, 16, 4, seed=5, start_step=2,
                                                      steps=4, augment=AugmentConfig())]
    other = np.asarray(next(iter(training_dataset(items, 16, 4, seed=6, steps=1)))[0])
    assert len(full) == 4 and len(tail) == 2
    np.testing.assert_array_equal(full[2], tail[0])
    np.testing.assert_array_equal(full[3], tail[1])
    assert not np.array_equal(full[0], other)


def test_photometric_augmentation_stays_in_range():
    augment = AugmentConfig(flip=False, rotate90=False, brightness=0.5, contrast=0.5)
    images, _ = next(iter(training_dataset(_items(), 16, 16, seed=0, steps=1, augment=augment)))
    assert float(np.asarray(images).min()) >= 0.0 and float(np.asarray(images).max()) <= 1.0


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


COLOUR = AugmentConfig(flip=False, rotate90=False, brightness=0.0, contrast=0.0, gain=0.3,
                       hue=60, saturation=0.5, greyscale=0.25, gamma=0.5, blur=1.5, noise=0.05)


def _batches(augment, seed=0, steps=3):
    items = [scene(0, 40), scene(1, 40)]
    return [(np.asarray(x), np.asarray(y)) for x, y in
            training_dataset(items, 16, 8, seed=seed, steps=steps, augment=augment)]


def test_colour_augmentation_changes_colours_not_labels_and_is_reproducible():
    plain, coloured = _batches(NO_AUGMENT), _batches(COLOUR)
    again = _batches(COLOUR)
    for (x0, y0), (x1, y1), (x2, _) in zip(plain, coloured, again, strict=True):
        np.testing.assert_array_equal(y0, y1)  # same patches, labels untouched
        np.testing.assert_array_equal(x1, x2)  # keyed by step: reproducible
        assert x1.shape == x0.shape and x1.dtype == np.float32
        assert x1.min() >= 0.0 and x1.max() <= 1.0
        assert np.abs(x1 - x0).mean() > 0.02
    # Channel means move apart from patch to patch: casts, not one global change.
    ratios = coloured[0][0].mean(axis=(1, 2)) / np.maximum(plain[0][0].mean(axis=(1, 2)), 1e-3)
    assert np.ptp(ratios[:, 0] / ratios[:, 2]) > 0.05


def test_greyscale_and_blur_do_what_they_say():
    from keras import ops

    from segmenter.training.augment import blur as _blur
    from segmenter.training.augment import colour_matrices as _colour_matrices

    grey = _colour_matrices(np.ones((4, 3)), np.zeros(4), np.zeros(4))
    rgb = np.random.default_rng(0).random((4, 6, 6, 3)).astype(np.float32)
    out = np.einsum("bhwc,bcd->bhwd", rgb, grey)
    assert np.abs(out - out[..., :1]).max() < 1e-5  # three equal channels
    np.testing.assert_allclose(out[..., 0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-4)
    noisy = np.random.default_rng(1).random((2, 24, 24, 3)).astype(np.float32)
    taps = np.exp(-0.5 * (np.arange(-4, 5) / 2.0) ** 2)
    kernel = np.stack([taps / taps.sum(), np.eye(9)[4]]).astype(np.float32)  # sigma 2; a delta
    blurred = np.asarray(_blur(ops.convert_to_tensor(noisy), ops.convert_to_tensor(kernel)))
    assert blurred.shape == noisy.shape
    assert float(np.std(blurred[0])) < 0.6 * float(np.std(noisy[0]))  # smoother
    np.testing.assert_allclose(blurred[0].mean(), noisy[0].mean(), atol=0.01)  # kept level
    np.testing.assert_allclose(blurred[1], noisy[1], atol=1e-6)  # a delta kernel: untouched
