"""Tiny in-memory data sets and configs for the training tests (no files, a few KB)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

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
