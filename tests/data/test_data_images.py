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


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("shape", "scale", "axis"),
    [((75, 100), 0.3, 0), ((99, 133), 0.2, 0), ((99, 133), 0.2, 1)],
)
def test_reduced_jpeg_decode_stays_aligned_with_the_label(shape, scale, axis) -> None:
    """A JPEG decoded at reduced size (Image.draft) has its edges where the label has them.

    The sizes are not multiples of the reduction factor, so the reduced decode has a partly
    padded last row / column. Pillow's BOX filter rounds each window to whole input pixels,
    so single edges may differ by a fraction of a pixel either way; averaged over every edge
    position the offset must vanish (it was +0.13 to +0.30 px when the padding was ignored).
    """
    offsets = []
    for edge in range(8, shape[axis] - 8):
        land = np.ones(shape, np.float32)
        if axis == 0:
            land[:edge] = 0
        else:
            land[:, :edge] = 0
        rgb = np.repeat((64 + land * 128).astype(np.uint8)[..., None], 3, axis=2)  # no clipping
        image, full, _ = images.load_photo(_jpeg(rgb), "edge.jpg", scale)
        assert full == shape
        label = images.resize_land(land, image.shape[:2])
        photo_land = (image.mean(axis=-1) * 255 - 64) / 128
        # Total land along the axis = where the edge sits, in output pixels.
        offsets.append(float((photo_land - label).sum(axis=axis).mean()))
    assert abs(np.mean(offsets)) < 0.03, np.mean(offsets)
    assert np.max(np.abs(offsets)) < 0.45


def test_unrecognised_image_says_so_without_python_object_names() -> None:
    for decode in (
        lambda: images.decode_photo(b"hello, not an image", "x.png"),
        lambda: images.read_png_label(b"hello, not an image", "x_label.png", 255),
    ):
        with pytest.raises(DataError) as info:
            decode()
        message = str(info.value)
        assert message.startswith("x") and "(unrecognised image format)" in message
        assert "BytesIO" not in message and "0x" not in message


def test_decompression_bomb_guard_stays_on_and_names_the_file(monkeypatch) -> None:
    assert Image.MAX_IMAGE_PIXELS is not None  # importing segmenter must not switch it off
    assert Image.MAX_IMAGE_PIXELS * 2 >= images.MAX_PIXELS  # but large photos are allowed
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # refuse above 20 pixels
    data = _png(np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"^huge\.png: not a readable image \(over the 20 pixel"):
        images.decode_photo(data, "huge.png")
    with pytest.raises(DataError, match=r"^huge_label\.png: not a readable label image \(over"):
        images.read_png_label(_png(np.zeros((6, 8), np.uint8)), "huge_label.png", 255)


def test_water_class_number_beyond_labels_names_the_file() -> None:
    data = _mat(**{"class": np.ones((2, 2), np.uint8), "labels": ["land ", "water"]})
    for number in (3, 0, -1):
        with pytest.raises(
            DataError, match=rf"^x_mres\.mat: water_class {number} is not a class of this file"
        ):
            images.read_mat_label(data, "x_mres.mat", number)
    assert images.read_mat_label(data, "x_mres.mat", 2).shape == (2, 2)
    # Without 'labels' the number cannot be checked against names: accepted as it is.
    assert images.read_mat_label(_mat(**{"class": np.ones((2, 2))}), "x.mat", 7).min() == 1
