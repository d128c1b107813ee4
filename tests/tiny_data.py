"""Tiny in-memory data sets and configs for the training tests (no files, a few KB)."""

from __future__ import annotations

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
