"""Helpers shared by the tests: generated data, rasters, runs and a real S3 server.

Imported as a plain module (``from helpers import make_run``): pytest puts ``tests/`` on the
path. Everything here is generated on the fly, a few KB to a few MB, so the suite needs no
network and no data files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmenter.config import DataConfig, load_config
from segmenter.model.network import build_model
from segmenter.training.plan import RunPlan, prepare_run

# --------------------------------------------------------------------------------------------
# Generated georeferenced rasters: sample scenes in UTM zone 17N


CRS = "EPSG:32617"  # WGS 84 / UTM zone 17N (Lake Ontario)
ORIGIN = (612_345.0, 4_845_678.0)
PIXEL = 0.25  # metres


def transform(pixel: float = PIXEL):
    from rasterio.transform import from_origin

    return from_origin(ORIGIN[0], ORIGIN[1], pixel, pixel)


def scene_pixels(size: int = 160, index: int = 0, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A generated sample scene: uint8 (H, W, 3) RGB and bool (H, W) water."""
    from segmenter.data.sample import make_scene

    scene = make_scene(index, size, seed)
    return scene.image, scene.water


def write_raster(path: Path, bands: np.ndarray, *, crs: str | None = CRS, nodata=None,
                 pixel: float = PIXEL, driver: str = "GTiff", colorinterp=None,
                 **options) -> Path:
    """Write a (count, H, W) array as a tiled GeoTIFF (or a COG with driver='COG')."""
    import rasterio

    count, height, width = bands.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
               "dtype": bands.dtype.name, "crs": crs, "transform": transform(pixel),
               "nodata": nodata, "tiled": True, "blockxsize": 64, "blockysize": 64,
               "compress": "deflate", **options}
    target = path if driver == "GTiff" else path.with_suffix(".plain.tif")
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(bands)
        if colorinterp:
            dst.colorinterp = colorinterp
    if driver == "COG":
        import rasterio.shutil

        rasterio.shutil.copy(target, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=64)
        target.unlink()
    return path


def rgb_raster(path: Path, size: int = 160, **kwargs) -> Path:
    image, _ = scene_pixels(size)
    return write_raster(path, np.moveaxis(image, -1, 0).copy(), **kwargs)


# --------------------------------------------------------------------------------------------
# Tiny in-memory data sets and configs for the training tests


TINY_SETTINGS = [
    "model.filters=4",
    "model.depth=2",
    "train.widths={16: 4}",
    "train.steps=6",
    "train.validate_every=3",
    "train.validation_batches=1",
]

TINY_YAML = """\
data: {source: sample, scale: 1.0, sample: {n: 4, size: 64, seed: 0}}
model: {depth: 2, filters: 4}
train:
  widths: {16: 4}
  steps: STEPS
  validate_every: EVERY
  validation_batches: 1
"""


@dataclass
class Item:
    stem: str
    image: np.ndarray
    land: np.ndarray
    source: str = "memory"


@dataclass
class TinyDataset:
    train: list[Item]
    test: list[Item]
    fingerprint: str = "tiny"
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"tiny: train {len(self.train)}, test {len(self.test)}"


def scene(index: int, size: int = 40, seed: int = 0) -> Item:
    """A blue-ish water band on the left, noisy green-ish land on the right."""
    rng = np.random.default_rng([seed, index])
    image = rng.random((size, size, 3), dtype=np.float32) * 0.3
    land = np.ones((size, size), np.float32)
    land[:, : size // 3 + index] = 0.0
    image[..., 2] += (1.0 - land) * 0.5
    image[..., 1] += land * 0.4
    return Item(f"scene{index}", np.clip(image, 0, 1), land)


def tiny_dataset(n_train: int = 3, test: bool = True, size: int = 40) -> TinyDataset:
    return TinyDataset(
        train=[scene(i, size) for i in range(n_train)],
        test=[scene(10, size)] if test else [],
    )


def tiny_yaml(steps: int, every: int) -> str:
    return TINY_YAML.replace("STEPS", str(steps)).replace("EVERY", str(every))


def png_declaring(width: int, height: int) -> bytes:
    """A 2 KB grey PNG whose header declares ``width x height`` (its data end early)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 50, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
            + chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------
# A real S3 server (moto) and data settings for the data tests


PUBLIC_BUCKET = "cdi-workshop"
PUBLIC_PREFIX = "semseg_data/ontario"
PRIVATE_BUCKET = "private-lab-data"


def data_cfg(**values: object) -> DataConfig:
    """A validated ``data`` section with these keys set."""
    return DataConfig.model_validate(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto S3 server and a boto3 client (dummy credentials) to seed it."""

    endpoint: str
    server: object

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="seeding",
            aws_secret_access_key="seeding",
            region_name="us-east-1",
        )

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> None:
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    def stop(self) -> None:
        self.server.stop()


def start_s3_server() -> S3Server:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log in test output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(endpoint=f"http://127.0.0.1:{port}", server=server)


def make_public_bucket(s3: S3Server, bucket: str, folder: Path, prefix: str) -> None:
    """A bucket anyone may list and read, as the real ``cdi-workshop`` bucket is."""
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    s3.upload_folder(folder, bucket, prefix)


# --------------------------------------------------------------------------------------------
# Tiny untrained runs and photos for the predict tests


TINY = ["data.scale=0.5", "model.depth=1", "model.filters=4", "train.widths={16: 4, 32: 2}"]


def make_run(path: Path, widths=(16, 32), finished=True, extra=(), seed: int = 0) -> Path:
    """A run directory as `segmenter train` leaves it, with tiny untrained models (``extra``:
    more --set overrides of its config), their weights drawn from ``seed``, so every test
    sees the same maps however the tests are ordered."""
    import keras

    cfg = load_config(None, [*TINY, *extra])
    run = prepare_run(RunPlan(path, cfg, list(widths)))
    if finished:
        for width in widths:
            run.model_path(width).parent.mkdir(parents=True, exist_ok=True)
            keras.utils.set_random_seed(seed + width)
            build_model(cfg.model).save(run.model_path(width))
            run.write_status(width, {"status": "finished", "final_val_water_iou": 0.5})
    return path


def write_photos(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    paths = {
        "rgb": folder / "shore.png",
        "grey": folder / "grey.png",
        "rgba": folder / "alpha.png",
        "jpg": folder / "photo.JPG",
    }
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(rgb[..., 0]).save(paths["grey"])
    Image.fromarray(np.dstack([rgb, np.full((40, 56), 200, np.uint8)])).save(paths["rgba"])
    Image.fromarray(rgb[:20, :24]).save(paths["jpg"], quality=90)
    return paths


# --------------------------------------------------------------------------------------------
# A run's models, loaded as predict loads them


def loaded_run(run_dir: Path, overrides=()):
    from segmenter.config import load_config
    from segmenter.predict import models
    from segmenter.runs import open_run

    run = open_run(run_dir)
    cfg = load_config(None, list(overrides), base=run.config)
    return models.load_models(run, cfg), cfg


# --------------------------------------------------------------------------------------------
# GeoTIFF training pairs


def write_pair(folder: Path, stem: str, index: int, *, label_pixel: float = 2 * PIXEL,
               label_crs: str = "EPSG:32617", label_origin_shift: float = 0.0) -> np.ndarray:
    """Image at PIXEL, label at ``label_pixel`` (nearest-decimated); returns the label grid."""
    from rasterio.transform import from_origin

    image, water = scene_pixels(128, index=index)
    folder.mkdir(parents=True, exist_ok=True)
    write_raster(folder / f"{stem}.tif", np.moveaxis(image, -1, 0).copy())
    step = int(round(label_pixel / PIXEL))
    label = np.where(water[::step, ::step], 255, 0).astype(np.uint8)
    import rasterio

    profile = {"driver": "GTiff", "width": label.shape[1], "height": label.shape[0],
               "count": 1, "dtype": "uint8", "crs": label_crs,
               "transform": from_origin(ORIGIN[0] + label_origin_shift, ORIGIN[1],
                                        label_pixel, label_pixel)}
    with rasterio.open(folder / f"{stem}_label.tif", "w", **profile) as dst:
        dst.write(label[None])
    return label


@contextlib.contextmanager
def stopped_at_step(step: int):
    """Training inside the block stops with an exception right after ``step`` (as a job killed
    mid-interval would, after its last checkpoint); the block must end so."""
    from segmenter.training.callback import WidthCallback

    class Stopped(Exception):
        pass

    original = WidthCallback.on_train_batch_end

    def stop(self, batch, logs=None):
        original(self, batch, logs)
        if self.tracker.step == step:
            raise Stopped

    WidthCallback.on_train_batch_end = stop
    try:
        with pytest.raises(Stopped):
            yield
    finally:
        WidthCallback.on_train_batch_end = original
