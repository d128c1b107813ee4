"""Decoding photos and labels, and resizing them by ``data.scale``.

A photo in memory is ``float32 (H, W, 3)`` in ``[0, 1]``; a label is ``land``: ``float32 (H, W)``
with ``1 = land (not water)`` and ``0 = water``, as in the notebook (the network predicts the
probability of land).

Resizing is area averaging (Pillow's ``BOX`` filter) for photos and labels alike, so a photo
pixel and its label pixel cover exactly the same ground. For photos that is a proper
anti-aliasing filter; for labels it makes each output pixel the honest fraction of land it
covers (metrics binarise at 0.5). scikit-image's ``resize(anti_aliasing=True)`` does the same job
but is ~40x slower on a 5000 x 2500 photo, and loading is the train command's start-up cost.
JPEGs are additionally decoded at a reduced size (libjpeg's DCT scaling via ``Image.draft``)
when the scale allows, which is both faster and itself an area-like average.

EXIF orientation is deliberately ignored: labels are drawn on the stored pixel grid.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from segmenter.errors import DataError

#: What Pillow raises for a file that is not a readable image (truncated, corrupt, foreign
#: format, or larger than the decompression-bomb cap).
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, DecompressionBombError)

#: Largest photo decoded, in pixels. Pillow's default guard (179 Mpx) rejects legitimate
#: aerial mosaics; this raises it (process-wide: Pillow has one setting) but keeps a cap, so a
#: decompression bomb still fails cleanly instead of exhausting memory.
MAX_PIXELS = 2_000_000_000
# Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS // 2:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2

#: Default cap on one photo's pixels, checked from the header before decoding: a tiny file can
#: declare a huge image (a decompression bomb). ``$SEGMENTER_MAX_PIXELS`` raises or lowers it.
DEFAULT_PIXEL_CAP = 500_000_000
PIXEL_CAP_ENV = "SEGMENTER_MAX_PIXELS"
#: Bytes per pixel at the working size that decoding and predicting a photo touch (float RGB,
#: probability maps, their copies): bench_predict's 25-megapixel photo peaked at ~66 B/px.
WORKING_BYTES_PER_PIXEL = 48

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
LABEL_PNG_SUFFIX = "_label.png"


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """The ``(height, width)`` of an image of ``shape`` resized by ``scale`` (at least 1 x 1)."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


# --------------------------------------------------------------------------------------------
# Photos


def decode_photo(data: bytes, name: str, scale: float = 1.0) -> tuple[np.ndarray, list[str]]:
    """Decode a photo to ``float32 (H, W, 3)`` in ``[0, 1]``, optionally resized by ``scale``.

    Grey, grey+alpha, RGBA, palette and 16-bit photos are converted; each conversion is
    reported in ``notes`` so the caller can tell the user what happened to their file.

    Raises:
        DataError: the bytes are not a readable image (names ``name``).
    """
    image, _, notes = load_photo(data, name, scale)
    return image, notes


def load_photo(
    data: bytes, name: str, scale: float = 1.0
) -> tuple[np.ndarray, tuple[int, int], list[str]]:
    """Like :func:`decode_photo`, also returning the photo's full-resolution ``(H, W)``.

    The full size is what a label must match, even when the JPEG was decoded at reduced size.
    """
    notes: list[str] = []
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in (".tif", ".tiff"):
        header = _tiff_header(data)
        if header is not None:
            check_decodable(name, header[0], scaled_shape(header[0], scale))
            if header[1] in _FOREIGN_TIFF_COLOURS:
                notes.append(f"{header[1]} TIFF read as if RGB: its colours are not RGB and "
                             "predictions may be wrong; convert it to RGB first")
        array = _read_tiff(data, name)
        full = (int(array.shape[0]), int(array.shape[1]))
        image = _to_float_rgb(array, name, notes)
        return _resize_float(image, scaled_shape(full, scale)), full, notes

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's truncated-file / EXIF chatter
            pil = Image.open(io.BytesIO(data))
            full = (pil.height, pil.width)
            target = scaled_shape(full, scale)
            check_decodable(name, full, target, len(pil.getbands()))
            # The region of the decoded pixels that the full photo covers: after a reduced
            # decode by f, ceil(w / f) pixels of which only w / f are the photo.
            box = (0.0, 0.0, float(pil.width), float(pil.height))
            if pil.format == "JPEG" and target != full and pil.mode in ("RGB", "L", "CMYK"):
                drafted = pil.draft(pil.mode, (target[1], target[0]))
                if drafted is not None:
                    box = tuple(float(v) for v in drafted[1])
            pil.load()
    except _UNREADABLE as exc:
        raise DataError(f"{name}: not a readable image ({_reason(exc)})") from None

    if pil.mode == "P":
        pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
    elif pil.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        notes.append(f"{pil.mode} photo converted to RGB")
        pil = pil.convert("RGB")
    elif pil.mode == "1":
        pil = pil.convert("L")
    whole = box == (0.0, 0.0, float(pil.width), float(pil.height))
    if pil.mode in ("RGB", "L") and ((pil.height, pil.width) != target or not whole):
        # 8-bit: resize in Pillow before converting to float (4x less memory to touch). The
        # box maps exactly the full photo onto the target, as resize_land does for the label.
        pil = pil.resize((target[1], target[0]), Image.Resampling.BOX, box=box)
    image = _to_float_rgb(np.asarray(pil), name, notes)
    return _resize_float(image, target), full, notes


def pixel_cap() -> int:
    """The largest photo decoded, in pixels: ``$SEGMENTER_MAX_PIXELS`` or the default."""
    text = os.environ.get(PIXEL_CAP_ENV, "").strip().replace("_", "")
    if text:
        try:
            return max(1, int(float(text)))
        except ValueError:
            raise DataError(
                f"${PIXEL_CAP_ENV}: expected a number of pixels, got {text!r}"
            ) from None
    return DEFAULT_PIXEL_CAP


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; else free pages), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_decodable(name: str, full: tuple[int, int], target: tuple[int, int],
                    bands: int = 4) -> None:
    """Refuse, before decoding, a photo whose declared size is over the pixel cap or memory.

    Raises:
        DataError: naming the file, its declared size, and the cap or the memory it needs.
    """
    pixels = full[0] * full[1]
    cap = pixel_cap()
    size = f"{full[1]}x{full[0]} pixels ({pixels / 1e6:,.0f} megapixels)"
    if pixels > cap:
        raise DataError(
            f"{name}: declares {size}, over the {cap / 1e6:,.0f}-megapixel limit for one photo "
            f"(a decompression bomb?); set ${PIXEL_CAP_ENV} to allow larger photos"
        )
    need = pixels * bands + target[0] * target[1] * WORKING_BYTES_PER_PIXEL
    available = available_memory()
    if available is not None and need > available:
        raise DataError(
            f"{name}: declares {size}; decoding and processing it needs about "
            f"{need / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of memory "
            "available"
        )


#: TIFF photometric interpretations whose bands are not R, G, B (tifffile's names).
_FOREIGN_TIFF_COLOURS = ("CIELAB", "ICCLAB", "ITULAB", "SEPARATED", "LOGLUV", "CFA")


def _tiff_header(data: bytes) -> tuple[tuple[int, int], str] | None:
    """A TIFF's ``(H, W)`` and photometric name from its header, without decoding."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            photometric = getattr(page.photometric, "name", str(page.photometric))
            return (int(page.imagelength), int(page.imagewidth)), photometric
    except Exception:  # noqa: BLE001 - any header problem is reported by the real read
        return None


def _read_tiff(data: bytes, name: str) -> np.ndarray:
    """TIFFs go through imageio (tifffile), which reads 16-bit and multi-band files properly."""
    import imageio.v3 as iio

    try:
        array = iio.imread(data, extension=".tif")
    except (OSError, ValueError, RuntimeError, IndexError, KeyError) as exc:
        raise DataError(f"{name}: not a readable image ({_reason(exc)})") from None
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (bands, H, W) -> (H, W, bands)
    return array


def _to_float_rgb(array: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Any 2-D / 3-D integer or float array -> ``float32 (H, W, 3)`` in ``[0, 1]``."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        notes.append("greyscale photo converted to RGB")
    elif array.ndim == 3 and array.shape[-1] == 2:
        notes.append("grey+alpha photo: alpha dropped, converted to RGB")
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] == 4:
        notes.append("alpha channel dropped")
        array = array[..., :3]
    elif not (array.ndim == 3 and array.shape[-1] == 3):
        raise DataError(
            f"{name}: expected an RGB or grey photo, got an array of shape {array.shape}"
        )

    if array.dtype == np.uint8:
        image = np.multiply(array, np.float32(1 / 255), dtype=np.float32)
    elif array.dtype == np.bool_:
        image = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) <= 65535 else np.iinfo(array.dtype).max
        notes.append(f"{8 * array.dtype.itemsize}-bit photo scaled to [0, 1] (divided by {top})")
        image = np.clip(array.astype(np.float32) / np.float32(top), 0, 1)
    elif np.issubdtype(array.dtype, np.floating):
        image = array.astype(np.float32, copy=False)
        if image.size and (np.nanmin(image) < 0 or np.nanmax(image) > 1):
            notes.append("float photo clipped to [0, 1]")
            image = np.clip(image, 0, 1)
    else:
        raise DataError(f"{name}: unsupported pixel type {array.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image)


# --------------------------------------------------------------------------------------------
# Labels


def read_mat_label(data: bytes, name: str, water_class: int | str) -> np.ndarray:
    """Read a MATLAB label file (key ``class``; ``labels`` optional) -> full-size ``land``.

    ``water_class`` is a 1-based class number, or a name looked up (case-insensitively) in the
    ``labels`` char array, whose rows MATLAB pads with spaces.

    Raises:
        DataError: unreadable file, no ``class`` key, or the water class name is not in
            ``labels`` (names ``name``).
    """
    import scipy.io
    from scipy.io.matlab import MatReadError

    if not data:
        raise DataError(f"{name}: not a readable .mat file (0 bytes)")
    try:
        # Only the two keys we use: real files also hold large float16 'preds'.
        mat = scipy.io.loadmat(io.BytesIO(data), variable_names=["class", "labels"])
    except NotImplementedError:
        raise DataError(
            f"{name}: MATLAB v7.3 (HDF5) label files are not supported; save with -v7"
        ) from None
    except (MatReadError, ValueError, TypeError, OSError, KeyError, IndexError,
            EOFError) as exc:
        raise DataError(f"{name}: not a readable .mat file ({_reason(exc)})") from None
    if "class" not in mat:
        raise DataError(f"{name}: no 'class' array in the .mat file")
    classes = np.asarray(mat["class"])
    if classes.ndim != 2:
        raise DataError(f"{name}: 'class' must be a 2-D array, got shape {classes.shape}")
    water = _water_number(water_class, mat.get("labels"), name)
    return (classes != water).astype(np.float32)


def _water_number(water_class: int | str, labels: np.ndarray | None, name: str) -> int:
    if isinstance(water_class, int):
        if labels is not None:
            names = label_names(labels)
            if not 1 <= water_class <= len(names):
                raise DataError(
                    f"{name}: water_class {water_class} is not a class of this file: its "
                    f"labels are 1..{len(names)} {names}"
                )
        return water_class
    if labels is None:
        raise DataError(
            f"{name}: water_class '{water_class}' is a name but the file has no 'labels'; "
            "use a class number"
        )
    names = label_names(labels)
    lowered = [n.lower() for n in names]
    wanted = water_class.strip().lower()
    if wanted not in lowered:
        raise DataError(f"{name}: water class '{water_class}' not in labels {names}")
    return lowered.index(wanted) + 1


def label_names(labels: np.ndarray) -> list[str]:
    """Class names from a MATLAB char array (padded rows) or cell array of strings."""
    array = np.asarray(labels)
    if array.dtype.kind == "U" and array.ndim == 2 and array.dtype.itemsize == 4:
        array = np.array(["".join(row) for row in array])  # char matrix read as single chars
    out = []
    for item in array.ravel():
        value = item
        while isinstance(value, np.ndarray):  # cell arrays nest each string in an array
            value = value.ravel()[0] if value.size else ""
        out.append(str(value).strip())
    return out


def read_png_label(data: bytes, name: str, water_value: int) -> np.ndarray:
    """Read a single-band label image (``<stem>_label.png``) -> full-size ``land``.

    Pixels equal to ``water_value`` are water; everything else is land. RGB images whose
    channels are identical (grey saved as RGB by many tools) are accepted.

    Raises:
        DataError: unreadable, or a colour (not single-band) image (names ``name``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pil = Image.open(io.BytesIO(data))
            pil.load()
    except _UNREADABLE as exc:
        raise DataError(f"{name}: not a readable label image ({_reason(exc)})") from None
    values = np.asarray(pil)  # for palette images the indices are the class values
    if values.ndim == 3:
        colour = values[..., :3] if values.shape[-1] >= 3 else values[..., :1]
        if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(colour.shape[-1])):
            raise DataError(f"{name}: label image must be single-band (grey), got colour")
        values = colour[..., 0]
    return (values != water_value).astype(np.float32)


def resize_land(land: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average a ``land`` map to ``shape``: each pixel becomes its fraction of land."""
    if land.shape == shape:
        return land.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(land, dtype=np.float32))  # mode "F"
    out = np.asarray(pil.resize((shape[1], shape[0]), Image.Resampling.BOX), dtype=np.float32)
    return np.clip(out, 0, 1)


def _resize_float(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average a float ``(H, W, C)`` image, one channel at a time (Pillow mode ``F``)."""
    if image.shape[:2] == shape:
        return image
    channels = [resize_land(image[..., c], shape) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


def _reason(exc: BaseException) -> str:
    """Why a decode failed, in words (Pillow's own messages name a BytesIO object)."""
    if isinstance(exc, UnidentifiedImageError):
        return "unrecognised image format"
    if isinstance(exc, DecompressionBombError):
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # where Pillow refuses
        return f"over the {limit:,} pixel limit for one image"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) float32 array: area averaging down, bilinear up.

    Shrinking goes through :func:`segmenter.data.images.resize_land` (area averaging, one
    float channel at a time), exactly what the data loader applies to training photos and
    labels, so the models see photos prepared the same way at prediction. Enlarging (the
    merged map back to the photo's size) is bilinear, a smooth map without blocks; Pillow
    works without TensorFlow's allocator, which keeps the peak memory of a large photo low.
    """
    height, width = values.shape[:2]
    shape = (int(shape[0]), int(shape[1]))
    if (height, width) == shape:
        return values.astype(np.float32, copy=False)
    shrink = shape[0] <= height and shape[1] <= width

    def one(channel: np.ndarray) -> np.ndarray:
        if shrink:
            return resize_land(channel, shape)
        pil = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
        return np.asarray(pil.resize((shape[1], shape[0]), Image.Resampling.BILINEAR),
                          dtype=np.float32)

    return _per_channel(values, shape, one)


def resize_box(values: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float],
               resample: str) -> np.ndarray:
    """Pillow resize of a float (h, w) or (h, w, C) array's ``box`` (left, top, right, bottom,
    in pixels of ``values``) to ``size`` (rows, cols): ``box`` area averaging or ``bilinear``.
    A raster tile resized this way equals its part of the whole raster resized in one piece."""
    method = Image.Resampling.BOX if resample == "box" else Image.Resampling.BILINEAR

    def one(channel: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
        return np.asarray(pil.resize((size[1], size[0]), method, box=box), dtype=np.float32)

    return _per_channel(values, size, one)


def _per_channel(values: np.ndarray, shape: tuple[int, int],
                 one: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if values.ndim == 2:
        return np.array(one(values))  # writable (Pillow's buffer is read-only)
    out = np.empty((shape[0], shape[1], values.shape[2]), np.float32)
    for channel in range(values.shape[2]):
        out[..., channel] = one(values[..., channel])
    return out
