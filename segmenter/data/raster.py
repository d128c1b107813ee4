"""Reading georeferenced rasters (GeoTIFF, Cloud-Optimized GeoTIFF) by windows.

A raster is never read whole: :class:`Raster` opens it through rasterio (GDAL) and hands out
windows as ``float32 (h, w, 3)`` RGB in ``[0, 1]`` plus a ``bool (h, w)`` validity mask, so a
mosaic larger than memory can be predicted or trained on tile by tile.

* **Where**: a local path, or ``s3://bucket/key`` read with byte-range requests through the same
  s3fs file system (anonymous access, credentials, endpoint) as every other remote file, so a
  COG on a bucket is read window by window, not downloaded whole.
* **Bands**: ``data.bands`` (1-based) are read as R, G, B; by default the first three. A raster
  with fewer bands than asked is refused; extra bands are named in a note (an alpha band is used
  as the nodata mask), never dropped silently.
* **Normalisation** (one divisor for the whole raster, so every tile is scaled alike):
  ``data.raster_max`` if set; else 255 for 8-bit data; else, for wider integers, ``2^bits - 1``
  where ``bits`` is the file's ``NBITS`` tag or the bits that the largest value of a decimated
  read uses (12-bit data stored as 16-bit is divided by 4095, not 65535, so it does not come out
  nearly black); float data is taken as ``[0, 1]`` unless its largest value is above 1, then
  divided by that value. Values are clipped to ``[0, 1]``.
* **Nodata**: a pixel is nodata when every chosen band is nodata: by ``data.nodata`` if set,
  else by the file's nodata value, internal mask or alpha band (GDAL's mask), and NaN in float
  data. Nodata pixels are filled with 0 in the image and marked False in the mask.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from segmenter.errors import DataError

log = logging.getLogger(__name__)

#: file extensions read as rasters (GeoTIFF / COG) by `predict`.
RASTER_EXTENSIONS = (".tif", ".tiff")
#: longest side of the decimated read that estimates the value range of a wide raster.
RANGE_SAMPLE_SIDE = 1024
#: GDAL's block cache while reading and writing rasters (megabytes); GDAL's default is 5 % of
#: the machine's memory, which would count against the memory a tile is meant to bound.
GDAL_CACHE_MB = 256


def is_raster_name(name: str) -> bool:
    """Whether a file name is read as a raster (by extension)."""
    return PurePosixPath(str(name)).suffix.lower() in RASTER_EXTENSIONS


def require_rasterio() -> Any:
    """Import rasterio, or fail with one line saying how to install it."""
    try:
        import rasterio
    except ImportError:  # pragma: no cover - rasterio is a core dependency
        raise DataError(
            "reading GeoTIFFs needs rasterio: pip install rasterio (its wheels include GDAL)"
        ) from None
    # GDAL's own warnings (a tag ignored in a damaged file...) go through the "rasterio"
    # loggers; without a handler Python prints them raw. The error that matters is reported as
    # one line by the callers; -v (debug) lets them through.
    chatty = logging.getLogger("rasterio")
    if chatty.level == logging.NOTSET and not logging.getLogger("segmenter").isEnabledFor(
            logging.DEBUG):
        chatty.setLevel(logging.ERROR)
    return rasterio


@contextlib.contextmanager
def no_georeference_warning() -> Iterator[None]:
    """rasterio's ``NotGeoreferencedWarning`` silenced, and only it, while rasters are opened.

    A raster without a georeference (a TIFF from any image tool) is said once, as a note of the
    prediction ("no coordinate reference system"); rasterio would also warn, raw and with its
    site-packages path, each time such a file or its outputs are opened.
    """
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


_GDAL = threading.local()


class gdal_env:  # noqa: N801 - used as a function: ``with gdal_env():``
    """A ``rasterio.Env`` with a bounded block cache and quiet, fast-failing remote reads.

    Shared by every user in this thread and closed when the last one leaves, in whatever
    order they leave: rasters in flight side by side (the Dask client holds two) each keep
    one open, and rasterio's own environments must be left in the order they were entered
    (leaving the first while the second is open deleted the second's: "No GDAL environment
    exists"). One never left (a raster cached by a worker until it exits) runs nothing when
    it is collected.
    """

    def __enter__(self) -> None:
        rasterio = require_rasterio()
        if not getattr(_GDAL, "users", 0):
            env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB,
                               GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
            env.__enter__()
            _GDAL.env, _GDAL.users = env, 0
        _GDAL.users += 1
        self._state = _GDAL

    def __exit__(self, *exc: Any) -> None:
        state = getattr(self, "_state", None)
        if state is not _GDAL or not getattr(state, "users", 0):
            return  # left on another thread than the one it was entered on: nothing to undo
        state.users -= 1
        if not state.users:
            env, state.env = state.env, None
            env.__exit__(None, None, None)


@dataclass
class Window:
    """A rectangle of raster pixels: rows ``[top, bottom)``, columns ``[left, right)``."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def rio(self) -> Any:
        from rasterio.windows import Window as RioWindow

        return RioWindow(self.left, self.top, self.right - self.left, self.bottom - self.top)


@dataclass
class Raster:
    """An open raster: size, georeference, chosen bands, normalisation and nodata rule.

    Use :func:`open_raster` (a context manager) to get one.
    """

    name: str
    dataset: Any = field(repr=False)
    bands: tuple[int, int, int]
    value_max: float
    nodata: float | None  # the configured nodata value, else the file's (None: mask only)
    nodata_configured: bool
    notes: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.dataset.height)

    @property
    def width(self) -> int:
        return int(self.dataset.width)

    @property
    def crs(self) -> Any:
        return self.dataset.crs

    @property
    def transform(self) -> Any:
        return self.dataset.transform

    @property
    def has_mask(self) -> bool:
        """Whether any pixel can be nodata (a value, a mask, an alpha band, float NaN)."""
        from rasterio.enums import MaskFlags

        if self.nodata_configured or self.dataset.nodata is not None:
            return True
        if np.issubdtype(np.dtype(self.dataset.dtypes[0]), np.floating):
            return True
        return any(
            MaskFlags.all_valid not in self.dataset.mask_flag_enums[b - 1] for b in self.bands
        )

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``float32 (h, w, 3)`` RGB in [0, 1] (nodata filled with 0) and the valid mask."""
        try:
            raw = self.dataset.read(indexes=list(self.bands), window=window.rio())
            valid = self._valid(raw, window)
        except Exception as exc:  # GDAL decode errors surface as several rasterio types
            if isinstance(exc, DataError):
                raise
            raise DataError(
                f"{self.name}: cannot read pixels, the file is corrupt or truncated "
                f"({_gdal_reason(exc)})"
            ) from None
        image = np.empty((raw.shape[1], raw.shape[2], 3), np.float32)
        scale = np.float32(1.0 / self.value_max)
        for channel in range(3):
            band = raw[channel].astype(np.float32, copy=False)
            np.multiply(band, scale, out=image[..., channel])
        del raw
        np.nan_to_num(image, copy=False, nan=0.0)
        np.clip(image, 0.0, 1.0, out=image)
        image[~valid] = 0.0
        return image, valid

    def _valid(self, raw: np.ndarray, window: Window) -> np.ndarray:
        if self.nodata_configured:
            nodata = self.nodata
            valid = ~np.all(raw == nodata, axis=0) if not math.isnan(nodata) else \
                ~np.all(np.isnan(raw), axis=0)
        else:
            masks = self.dataset.read_masks(indexes=list(self.bands), window=window.rio())
            valid = np.any(masks > 0, axis=0)
        if np.issubdtype(raw.dtype, np.floating):
            valid &= ~np.all(np.isnan(raw), axis=0)
        return valid


class open_raster:  # noqa: N801 - used as a context manager, like open()
    """Open a raster file or ``s3://`` URL for windowed reading (a context manager).

    Args:
        location: local path or ``s3://bucket/key``.
        data_cfg: ``data`` section: ``bands``, ``nodata``, ``raster_max`` and the S3 options.
        storage: the :class:`~segmenter.data.storage.Storage` the file was found in (its s3fs
            file system is reused); ``None`` opens one for an ``s3://`` location.
        relpath: the file's path relative to ``storage``.

    Raises:
        DataError: not a readable raster, fewer bands than asked, a band number out of range.
    """

    def __init__(self, location: str, data_cfg: Any, storage: Any = None,
                 relpath: str = "") -> None:
        self.location = str(location)
        self.data_cfg = data_cfg
        self.storage = storage
        self.relpath = relpath
        self._env: Any = None
        self._dataset: Any = None

    def __enter__(self) -> Raster:
        rasterio = require_rasterio()
        self._env = gdal_env()
        self._env.__enter__()
        try:
            fp, opener = self._source()
            try:
                with no_georeference_warning():  # said once, as a note (describe)
                    self._dataset = (rasterio.open(fp, opener=opener) if opener
                                     else rasterio.open(fp))
            except rasterio.errors.RasterioError as exc:
                raise DataError(
                    f"{self.location}: not a readable raster ({_first_line(exc)})"
                ) from None
            return describe(self._dataset, self.location, self.data_cfg)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: Any) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None
        if self._env is not None:
            self._env.__exit__(None, None, None)
            self._env = None

    def _source(self) -> tuple[str, Any]:
        from segmenter.data import storage as storage_mod

        storage = self.storage
        relpath = self.relpath
        if storage is None and storage_mod.is_s3(self.location):
            parent, _, relpath = self.location.rstrip("/").rpartition("/")
            storage = storage_mod.open_storage(parent, self.data_cfg)
        if storage is None or not storage.remote:
            path = self.location if storage is None else storage_mod._join(storage.root, relpath)
            try:
                with open(path, "rb") as handle:
                    head = handle.read(4)
            except OSError as exc:
                raise DataError(f"{self.location}: cannot read ({exc.strerror})") from None
            if head[:2] not in (b"II", b"MM"):
                raise DataError(f"{self.location}: not a readable raster (not a TIFF file)")
            return path, None
        full = storage_mod._join(storage.root, relpath)
        s3 = storage.fs.fs  # the s3fs under the whole-file cache: ranged reads, no download

        def opener(path: str, mode: str = "rb") -> Any:
            try:
                return s3.open(path, "rb", block_size=1 << 20, cache_type="readahead")
            except Exception as exc:
                raise storage_mod._translate(exc, self.location, storage) from None

        try:
            s3.info(full)
        except Exception as exc:
            raise storage_mod._translate(exc, self.location, storage) from None
        return full, opener


def describe(dataset: Any, name: str, data_cfg: Any) -> Raster:
    """The :class:`Raster` view of an open rasterio dataset under ``data_cfg``'s rules."""
    notes: list[str] = []
    count = int(dataset.count)
    wanted = tuple(data_cfg.bands) if data_cfg.bands else (1, 2, 3)
    if count < max(wanted):
        asked = ", ".join(map(str, wanted))
        hint = " (for a grey raster set data.bands=[1, 1, 1])" if count == 1 else ""
        raise DataError(
            f"{name}: has {count} band(s) but data.bands asks for bands {asked}{hint}"
        )
    colours = [ci.name for ci in dataset.colorinterp]
    if count > 3 or data_cfg.bands:
        unused = [b for b in range(1, count + 1) if b not in wanted]
        used = ", ".join(f"{b} ({colours[b - 1]})" for b in wanted)
        text = f"{count}-band raster: bands {used} used as R, G, B"
        if unused:
            described = ", ".join(
                f"{b} ({colours[b - 1]}"
                + (": used as the nodata mask" if colours[b - 1] == "alpha" else "") + ")"
                for b in unused
            )
            text += f"; not used: {described} (choose with data.bands)"
        notes.append(text)
    dtypes = {dataset.dtypes[b - 1] for b in wanted}
    if len(dtypes) > 1:
        raise DataError(f"{name}: the chosen bands have different pixel types {sorted(dtypes)}")
    dtype = np.dtype(dtypes.pop())
    configured = data_cfg.nodata is not None
    nodata = float(data_cfg.nodata) if configured else dataset.nodata
    raster = Raster(
        name=name, dataset=dataset, bands=wanted, value_max=1.0,
        nodata=None if nodata is None else float(nodata), nodata_configured=configured,
        notes=notes,
    )
    raster.value_max = _value_max(raster, dtype, data_cfg, notes)
    if dataset.crs is None:
        notes.append("no coordinate reference system: the outputs have none either")
    return raster


def _value_max(raster: Raster, dtype: np.dtype, data_cfg: Any, notes: list[str]) -> float:
    """The value that maps to 1.0 (see the module docstring)."""
    if data_cfg.raster_max is not None:
        notes.append(f"values divided by {data_cfg.raster_max:g} (data.raster_max)")
        return float(data_cfg.raster_max)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.integer):
        nbits = raster.dataset.tags(bidx=raster.bands[0], ns="IMAGE_STRUCTURE").get("NBITS")
        if nbits and nbits.isdigit() and 0 < int(nbits) <= 8 * dtype.itemsize:
            bits = int(nbits)
            how = "NBITS tag"
        else:
            top = _sampled_max(raster)
            bits = max(8, int(math.ceil(math.log2(top + 1)))) if top > 0 else 8
            how = f"largest value {top:g}"
        value_max = float(2**bits - 1)
        notes.append(
            f"{8 * dtype.itemsize}-bit raster: values divided by {value_max:g} "
            f"({bits} bits used, from the {how}; set data.raster_max to change)"
        )
        return value_max
    top = _sampled_max(raster)
    if top > 1.0:
        notes.append(f"float raster: values divided by {top:g}, its largest value")
        return float(top)
    return 1.0


def _sampled_max(raster: Raster) -> float:
    """Largest valid value of the chosen bands in a decimated read (overviews when present)."""
    from rasterio.enums import Resampling

    factor = max(1.0, max(raster.height, raster.width) / RANGE_SAMPLE_SIDE)
    shape = (3, max(1, int(raster.height / factor)), max(1, int(raster.width / factor)))
    try:
        data = raster.dataset.read(
            indexes=list(raster.bands), out_shape=shape, resampling=Resampling.nearest,
            masked=True,
        )
    except Exception as exc:
        raise DataError(f"{raster.name}: cannot read pixels ({_first_line(exc)})") from None
    values = data.compressed() if np.ma.isMaskedArray(data) else np.asarray(data).ravel()
    if raster.nodata_configured and raster.nodata is not None:
        values = values[values != raster.nodata]
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return float(values.max()) if values.size else 0.0


def _gdal_reason(exc: BaseException) -> str:
    """GDAL's own message behind a rasterio error ("Read failed. See previous exception")."""
    current: BaseException | None = exc
    while current is not None and "previous exception" in str(current):
        current = current.__cause__ or current.__context__
    return _first_line(current or exc)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
