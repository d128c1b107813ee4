"""Decoding photos and labels, and resizing them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from segmenter.data import images
from segmenter.errors import DataError


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _mat(**keys: object) -> bytes:
    buffer = io.BytesIO()
    savemat(buffer, keys, do_compression=True)
    return buffer.getvalue()


def test_rgb_photo_is_float32_in_unit_range() -> None:
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 255
    image, notes = images.decode_photo(_png(rgb), "a.png")
    assert image.shape == (6, 8, 3) and image.dtype == np.float32
    assert image[..., 0].min() == 1.0 and image[..., 1:].max() == 0.0
    assert notes == []


@pytest.mark.parametrize(
    ("array", "note"),
    [
        (np.full((6, 8), 128, np.uint8), "greyscale"),
        (np.full((6, 8, 4), 200, np.uint8), "alpha"),
        (np.full((6, 8), 65535, np.uint16), "16-bit"),
    ],
)
def test_grey_rgba_and_16_bit_photos_are_converted_with_a_note(array, note) -> None:
    image, notes = images.decode_photo(_png(array), "odd.png")
    assert image.shape == (6, 8, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() <= image.max() <= 1.0
    assert any(note in n for n in notes)


def test_16_bit_tiff() -> None:
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", np.full((5, 7, 3), 32768, np.uint16), extension=".tif")
    image, notes = images.decode_photo(data, "scan.tif")
    assert image.shape == (5, 7, 3)
    assert image.max() == pytest.approx(32768 / 65535, abs=1e-6)
    assert any("16-bit" in n for n in notes)


def test_corrupt_photo_names_the_file() -> None:
    with pytest.raises(DataError, match=r"^broken\.JPG: not a readable image"):
        images.decode_photo(b"\xff\xd8\xff not really a jpeg", "broken.JPG")


def test_scale_resizes_by_area_average() -> None:
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = 255
    image, full, _ = images.load_photo(_png(rgb), "a.png", scale=0.25)
    assert full == (40, 60)
    assert image.shape == (10, 15, 3)
    assert image[:, :7].min() == pytest.approx(1.0) and image[:, 8:].max() == pytest.approx(0.0)
    assert image[0, 7, 0] == pytest.approx(0.5, abs=0.01)  # the pixel straddling the edge


def test_mat_label_water_by_number_and_by_name() -> None:
    classes = np.array([[1, 2, 3], [2, 2, 1]], np.uint8)
    data = _mat(**{"class": classes, "labels": ["land ", "water", "sand "]})
    by_number = images.read_mat_label(data, "x_mres.mat", 2)
    by_name = images.read_mat_label(data, "x_mres.mat", "Water")
    expected = np.array([[1, 0, 1], [0, 0, 1]], np.float32)  # 1 = land (not water)
    np.testing.assert_array_equal(by_number, expected)
    np.testing.assert_array_equal(by_name, expected)
    sand = images.read_mat_label(data, "x_mres.mat", "sand")
    np.testing.assert_array_equal(sand, (classes != 3).astype(np.float32))


def test_mat_errors_name_the_file() -> None:
    with pytest.raises(DataError, match=r"^x_mres\.mat: no 'class' array"):
        images.read_mat_label(_mat(labels=["land"]), "x_mres.mat", 2)
    data = _mat(**{"class": np.ones((2, 2), np.uint8), "labels": ["land ", "water"]})
    with pytest.raises(DataError, match=r"^x_mres\.mat: water class 'lake' not in labels"):
        images.read_mat_label(data, "x_mres.mat", "lake")
    with pytest.raises(DataError, match=r"^x_mres\.mat: water_class 'water' is a name but"):
        images.read_mat_label(_mat(**{"class": np.ones((2, 2))}), "x_mres.mat", "water")
    with pytest.raises(DataError, match=r"^junk\.mat: not a readable \.mat file"):
        images.read_mat_label(b"garbage" * 50, "junk.mat", 2)


def test_png_label_with_configurable_water_value() -> None:
    values = np.array([[0, 255], [7, 255]], np.uint8)
    np.testing.assert_array_equal(
        images.read_png_label(_png(values), "a_label.png", 255), [[1, 0], [1, 0]]
    )
    np.testing.assert_array_equal(
        images.read_png_label(_png(values), "a_label.png", 7), [[1, 1], [0, 1]]
    )
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"^a_label\.png: label image must be single-band"):
        images.read_png_label(_png(colour), "a_label.png", 255)


def test_resized_labels_are_honest_land_fractions() -> None:
    land = np.ones((8, 8), np.float32)
    land[:, :3] = 0  # 3 of 8 columns are water
    small = images.resize_land(land, (2, 2))
    np.testing.assert_allclose(small, [[0.25, 1.0], [0.25, 1.0]])
    assert small.dtype == np.float32
