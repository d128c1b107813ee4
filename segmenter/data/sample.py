"""The built-in sample: generated shoreline and pond scenes in the Ontario layout.

Each scene is an aerial-looking photo with a lake shore or ponds, written as ``<stem>.JPG`` with
``<stem>_mres.mat`` (``class``: uint8, land = 1, water = 2; ``labels`` = ['land', 'water']),
in ``train/`` and ``test/``, exactly like the real data set. One scene in eight is inland, with
no water at all, as some frames of every flight are: a model must leave those dry.

The scenes are built so that brightness alone cannot separate water from land, otherwise a
model would learn a threshold and nothing else:

* land has dark parts as dark as water: forest canopy with deep gaps, cast shadows of trees and
  houses, charcoal roofs;
* water has bright parts: sun glitter on ripples, pale shallows near the shore, and on some
  scenes a bright sky reflection;
* what does separate them is what a CNN can learn: texture (fine stretched ripples and glitter
  vs. lumpy canopy), shapes (straight roof edges), context (shallows and beaches hug a soft
  shoreline) and, within one scene, colour.

Colours and light vary widely, as they do between real flights: each scene draws a *look*
(water colour, land and forest palette, colour cast of the light, haze, exposure). Training and
test scenes draw from the :data:`TRAIN_LOOK` families; the ``test_shifted/`` scenes draw from
the held-out :data:`SHIFTED_LOOK` families (turbid brown, algae green and hazy pale water,
straw-dry and autumn land, strong warm or cool casts, haze, under- and over-exposure), so a
model scored there is scored on colours it never trained on.

Generation uses numpy, scipy.ndimage and Pillow only, is seeded per scene (scene ``i`` of seed
``s`` is the same whatever ``n`` is) and takes well under a second per 512-pixel scene.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from scipy import ndimage

from segmenter.config import DataConfig, SampleConfig
from segmenter.errors import DataError
from segmenter.fileio import write_bytes

log = logging.getLogger(__name__)

#: Bump when the scenes change, so cached samples are regenerated.
GENERATOR_VERSION = 3
#: Every ``DRY_EVERY``-th scene (index ``DRY_EVERY - 2``, ``2 * DRY_EVERY - 2``, ...) has no
#: water: an inland frame of a flight, which a model must leave dry.
DRY_EVERY = 8
#: Height / width of a generated photo (4:3 landscape, like most aerial obliques).
ASPECT = 0.75
#: Share of the scenes written to ``test/``.
TEST_SHARE = 0.25
WATER_CLASS = 2
LAND_CLASS = 1
_COMPLETE = "COMPLETE"
#: The sub-folder of colour-shifted test scenes.
SHIFTED_DIR = "test_shifted"
#: scipy.io.savemat writes its creation time into the 116-byte MAT header text; the sample
#: writes this fixed text instead, so the same scenes always give byte-identical files.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by segmenter sample-data".ljust(116, b" ")


@dataclass(frozen=True)
class Look:
    """Colour families a scene draws from: RGB triples in [0, 1] and ranges of the light.

    Attributes:
        water: base water colours (before ripples, shallows and glitter).
        grass, canopy: open land and forest colours.
        cast: per-channel gain of the light, drawn per scene between these two triples.
        haze: range of the share of a pale veil laid over the scene (0 = clear air).
        exposure: ranges of the overall exposure factor (one range is picked per scene).
    """

    water: tuple[tuple[float, float, float], ...]
    grass: tuple[tuple[float, float, float], ...]
    canopy: tuple[tuple[float, float, float], ...]
    cast: tuple[tuple[float, float, float], tuple[float, float, float]]
    haze: tuple[float, float]
    exposure: tuple[tuple[float, float], ...]


#: Training (and ``test/``) scenes: navy, dark, teal, blue-grey, sky-bright and grey water;
#: green fields; green canopy; mild casts; clear to lightly hazy air.
TRAIN_LOOK = Look(
    water=(
        (0.06, 0.10, 0.22), (0.12, 0.18, 0.23), (0.13, 0.24, 0.26), (0.17, 0.25, 0.33),
        (0.32, 0.39, 0.46), (0.30, 0.31, 0.32),
    ),
    grass=((0.40, 0.46, 0.22), (0.47, 0.48, 0.26), (0.34, 0.43, 0.20), (0.30, 0.36, 0.22)),
    canopy=((0.10, 0.17, 0.07), (0.13, 0.20, 0.09), (0.09, 0.14, 0.08)),
    cast=((0.93, 0.95, 0.95), (1.05, 1.04, 1.07)),
    haze=(0.0, 0.08),
    exposure=((0.85, 1.15),),
)
#: ``test_shifted/`` scenes: colours no training scene has.
SHIFTED_LOOK = Look(
    water=((0.33, 0.27, 0.17), (0.14, 0.26, 0.15), (0.50, 0.54, 0.55), (0.24, 0.22, 0.14)),
    grass=((0.62, 0.57, 0.40), (0.55, 0.45, 0.30), (0.58, 0.60, 0.55)),
    canopy=((0.25, 0.14, 0.06), (0.05, 0.08, 0.06), (0.30, 0.22, 0.08)),
    cast=((0.80, 0.92, 1.18), (1.20, 1.00, 0.78)),
    haze=(0.12, 0.30),
    exposure=((0.62, 0.75), (1.2, 1.35)),
)
LOOKS = {"train": TRAIN_LOOK, "shifted": SHIFTED_LOOK}


@dataclass(frozen=True)
class Scene:
    """One generated scene: ``image`` uint8 (H, W, 3) and ``water`` bool (H, W)."""

    stem: str
    image: np.ndarray
    water: np.ndarray


def scene_shape(size: int) -> tuple[int, int]:
    """(height, width) of a scene ``size`` pixels wide."""
    return max(8, round(size * ASPECT)), size


def n_test_scenes(n: int) -> int:
    """How many of ``n`` scenes go to ``test/`` (at least one, never all)."""
    return min(n - 1, max(1, round(n * TEST_SHARE)))


def write_sample(
    folder: str | os.PathLike, n: int, size: int, seed: int, *, overwrite: bool = False
) -> dict[str, int]:
    """Write ``n`` scenes ``size`` pixels wide into ``folder/train`` and ``folder/test``.

    The folder appears complete or not at all: the scenes are written into a temporary
    sibling folder which is then renamed. An existing non-empty ``folder`` is refused (old and
    new scenes would mix) unless ``overwrite``, which replaces it and everything in it.

    Returns:
        The number of scenes written to each sub-folder.

    Raises:
        DataError: ``n`` or ``size`` outside the ``data.sample`` schema's limits, a non-empty
            folder without ``overwrite``, a file in the way, or a write failure (names it).
    """
    return _publish(Path(folder), validated_spec(n=n, size=size, seed=seed), overwrite, None)


def validated_spec(n: int, size: int, seed: int) -> SampleConfig:
    """``n``, ``size`` and ``seed`` checked against the schema (the one source of limits)."""
    try:
        return SampleConfig(n=n, size=size, seed=seed)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        msg = str(err["msg"])
        raise DataError(
            f"sample.{key}: {msg[:1].lower()}{msg[1:]} (got {err.get('input')!r})"
        ) from None


def ensure_sample(data_cfg: DataConfig) -> str:
    """The folder of the generated sample, generating it into the cache on first use.

    The folder is keyed by generator version, n, size and seed, and appears atomically (see
    :func:`write_sample`), so an interrupted or concurrent run never leaves a half-written
    sample behind.
    """
    from segmenter.data.storage import cache_root

    spec = data_cfg.sample
    folder = (
        cache_root(data_cfg)
        / "sample"
        / (f"v{GENERATOR_VERSION}-n{spec.n}-size{spec.size}-seed{spec.seed}")
    )
    if (folder / _COMPLETE).is_file():
        return str(folder)
    log.info(
        "generating the built-in sample (%d scenes, %d px wide) in %s", spec.n, spec.size, folder
    )
    # An existing folder without the marker is an incomplete leftover: replace it.
    _publish(folder, spec, overwrite=True, marker=_COMPLETE)
    return str(folder)


def _publish(
    folder: Path, spec: SampleConfig, overwrite: bool, marker: str | None
) -> dict[str, int]:
    """Generate into a temporary sibling of ``folder``, then rename it onto ``folder``.

    With a ``marker``, the file is written last inside the new folder, and a ``folder`` that
    already holds it (a concurrent run that finished first) is kept as it is.
    """
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: is a file; expected a folder")
    if not overwrite and folder.is_dir() and any(folder.iterdir()):
        raise DataError(
            f"{folder}: folder is not empty (old and new scenes would mix); "
            "choose a new folder or pass --overwrite to replace it"
        )
    staging: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = _sibling(folder, "tmp")
        counts = _write_scenes(staging, spec.n, spec.size, spec.seed)
        if marker:
            (staging / marker).write_text("ok\n", encoding="utf-8")
            if (folder / marker).is_file():
                return counts
        if folder.is_dir() and any(folder.iterdir()):
            # rename() only replaces an empty folder: move the old one aside first.
            old = _sibling(folder, "old")
            os.replace(folder, old / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except OSError as exc:
        raise DataError(f"{folder}: cannot write the sample ({exc.strerror or exc})") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return counts


def _sibling(folder: Path, kind: str) -> Path:
    """A new hidden folder beside ``folder`` (mkdir, so it gets the usual permissions)."""
    path = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{kind}")
    path.mkdir()
    return path


def _write_scenes(folder: Path, n: int, size: int, seed: int) -> dict[str, int]:
    n_test = n_test_scenes(n)
    counts = {"train": 0, "test": 0, SHIFTED_DIR: 0}
    for index in range(n):
        split = "test" if index >= n - n_test else "train"
        scene = make_scene(index, size, seed)
        _write_scene(folder / split, scene)
        counts[split] += 1
    # As many colour-shifted test scenes as plain ones, drawn from the held-out looks.
    for index in range(n_test):
        _write_scene(folder / SHIFTED_DIR, make_scene(index, size, seed, look="shifted"))
        counts[SHIFTED_DIR] += 1
    return counts


def _write_scene(folder: Path, scene: Scene) -> None:
    from PIL import Image
    from scipy.io import savemat

    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG", quality=92)
    write_bytes(folder / f"{scene.stem}.JPG", buffer.getvalue())
    classes = np.where(scene.water, WATER_CLASS, LAND_CLASS).astype(np.uint8)
    buffer = io.BytesIO()
    # A list of equal-length strings becomes a padded MATLAB char array, as in the real files.
    savemat(buffer, {"class": classes, "labels": ["land ", "water"]}, do_compression=True)
    content = buffer.getvalue()
    write_bytes(folder / f"{scene.stem}_mres.mat", _MAT_HEADER + content[len(_MAT_HEADER):])


# --------------------------------------------------------------------------------------------
# The scene generator


def make_scene(index: int, size: int, seed: int, look: str = "train") -> Scene:
    """Generate scene ``index`` of the sample with ``seed``, ``size`` pixels wide.

    Args:
        look: ``train`` (the scenes of ``train/`` and ``test/``) or ``shifted`` (the held-out
            colour families of ``test_shifted/``; a different scene for the same index).
    """
    if look not in LOOKS:
        raise ValueError(f"look must be one of {sorted(LOOKS)}, got {look!r}")
    key = [seed % 2**63, index] if look == "train" else [seed % 2**63, index, 1]
    rng = np.random.default_rng(key)
    palette = LOOKS[look]
    shape = scene_shape(size)
    unit = size / 512  # lengths below are in pixels of a 512-wide scene

    water = _water_mask(rng, shape, unit)
    if is_dry(index):
        water = np.zeros_like(water)  # same draws as any scene, so the others do not change
    land_rgb = _land(rng, shape, unit, water, palette)
    water_rgb = _water(rng, shape, unit, water, palette)

    # A soft shoreline: colours blend over a couple of pixels; the label stays sharp.
    alpha = ndimage.gaussian_filter(water.astype(np.float32), sigma=1.2 * unit)[..., None]
    image = alpha * water_rgb + (1 - alpha) * land_rgb

    # Cloud shadows darken land and water alike, in soft patches (about half the scenes).
    if rng.random() < 0.6:
        cloud = np.clip(_noise(rng, shape, 70 * unit) - rng.uniform(-0.2, 0.6), 0, 1)
        image *= (1 - rng.uniform(0.3, 0.45) * np.clip(cloud * 2, 0, 1))[..., None]

    # Light: a colour cast and haze (a pale veil that lifts the darks and flattens contrast).
    low, high = (np.asarray(bound, dtype=np.float32) for bound in palette.cast)
    image *= low + rng.random(3).astype(np.float32) * (high - low)
    veil = rng.uniform(*palette.haze)
    image = (1 - veil) * image + veil * np.array([0.72, 0.74, 0.78], dtype=np.float32)

    # Camera: exposure, a light fall-off across the frame, a little blur and sensor noise.
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h).astype(np.float32)
    exposure = rng.uniform(*palette.exposure[rng.integers(len(palette.exposure))])
    image *= (exposure * (1 + rng.uniform(0.05, 0.15) * (ramp - ramp.mean())))[..., None]
    image = ndimage.gaussian_filter(image, sigma=(0.5 * unit, 0.5 * unit, 0))
    image += rng.normal(0, 0.012, image.shape).astype(np.float32)
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    prefix = "scene" if look == "train" else "shifted"
    return Scene(stem=f"{prefix}_{index:03d}", image=pixels, water=water)


def is_dry(index: int) -> bool:
    """Whether scene ``index`` is an inland scene without water (see :data:`DRY_EVERY`)."""
    return index % DRY_EVERY == DRY_EVERY - 2


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field with features about ``sigma`` pixels across, zero mean, unit std.

    Drawn at low resolution and zoomed up, so large features cost no more than small ones.
    """
    h, w = shape
    step = max(1.0, sigma / 3)
    small = (int(np.ceil(h / step)) + 4, int(np.ceil(w / step)) + 4)
    field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / step)
    zoomed = ndimage.zoom(field, step, order=1, prefilter=False)[:h, :w]
    zoomed = zoomed - zoomed.mean()
    return zoomed / (zoomed.std() + 1e-6)


def _fractal(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Noise with detail at several scales (a rough, natural-looking outline)."""
    field = _noise(rng, shape, sigma) + 0.5 * _noise(rng, shape, sigma / 3)
    field += 0.25 * _noise(rng, shape, sigma / 9)
    return field / field.std()


def _water_mask(rng: np.random.Generator, shape: tuple[int, int], unit: float) -> np.ndarray:
    """A lake shore (water on one side of a wiggly line) or a few ponds; 15-40 % water."""
    h, w = shape
    kind = rng.choice(["shore", "shore", "ponds"])
    if kind == "shore":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(h, w)
        field = 3.0 * ramp / ramp.std() + _fractal(rng, shape, 60 * unit)
    else:
        field = _fractal(rng, shape, 45 * unit)
    share = rng.uniform(0.17, 0.38)
    return field > np.quantile(field, 1 - share)


def _land(
    rng: np.random.Generator, shape: tuple[int, int], unit: float, water: np.ndarray,
    palette: Look,
) -> np.ndarray:
    """Fields, forest, beach, houses and their shadows (RGB float32, before the camera)."""
    h, w = shape
    land = ~water
    # No water (a dry scene): no shore, so no beach.
    dist_to_water = (ndimage.distance_transform_edt(land) if water.any()
                     else np.full(shape, np.inf, dtype=np.float32))

    # Grass / fields: yellow-green with patches of bare soil, fairly bright, low texture.
    grass = np.array(palette.grass[rng.integers(len(palette.grass))])
    soil = np.array([0.50, 0.42, 0.30])
    patches = _noise(rng, shape, 30 * unit)
    mix = np.clip(0.5 + 0.5 * patches, 0, 1)[..., None] * rng.uniform(0.2, 0.6)
    rgb = ((1 - mix) * grass + mix * soil).astype(np.float32)
    rgb *= (1 + 0.06 * _noise(rng, shape, 3 * unit))[..., None]

    # Beach: pale sand along part of the shore.
    beach_width = rng.uniform(3, 12) * unit * (1 + 0.6 * _noise(rng, shape, 40 * unit))
    beach = land & (dist_to_water < beach_width) & (_noise(rng, shape, 50 * unit) > -0.2)
    rgb[beach] = np.array([0.66, 0.60, 0.47]) * (
        1 + 0.05 * rng.standard_normal((int(beach.sum()), 1))
    )

    # Forest: dark lumpy canopy with near-black gaps; 30-55 % of the land.
    forest_field = _fractal(rng, shape, 35 * unit)
    forest_share = rng.uniform(0.30, 0.55)
    forest = land & ~beach & (forest_field > np.quantile(forest_field[land], 1 - forest_share))
    crowns = _noise(rng, shape, 2.2 * unit)
    canopy = np.array(palette.canopy[rng.integers(len(palette.canopy))])
    brightness = np.clip(1.0 + 0.45 * crowns, 0.25, 1.9)[..., None]
    rgb = np.where(forest[..., None], canopy * brightness, rgb).astype(np.float32)

    # Houses: rectangles with charcoal, red-brown or pale roofs, on land away from the shore.
    roofs = np.zeros(shape, dtype=bool)
    n_houses = rng.integers(4, 14)
    for _ in range(n_houses):
        rh, rw = (rng.uniform(10, 26, size=2) * unit).astype(int) + 2
        top, left = rng.integers(0, max(1, h - rh)), rng.integers(0, max(1, w - rw))
        box = (slice(top, top + rh), slice(left, left + rw))
        if water[box].any() or beach[box].any():
            continue
        colour = np.array(
            rng.choice(
                [[0.16, 0.16, 0.17], [0.20, 0.19, 0.21], [0.45, 0.23, 0.17], [0.62, 0.62, 0.60]]
            )
        )
        shade = np.linspace(0.85, 1.1, rw, dtype=np.float32)[None, :, None]
        rgb[box] = colour * shade
        roofs[box] = True

    # Cast shadows: trees and houses shade the ground on the side away from the sun.
    sun = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(4, 10) * unit
    dy, dx = int(round(np.sin(sun) * length)), int(round(np.cos(sun) * length))
    casters = forest | roofs
    shadow = np.roll(casters, (dy, dx), axis=(0, 1)) & ~casters & land
    darkness = rng.uniform(0.35, 0.5)
    rgb[shadow] *= np.array([darkness, darkness, darkness * 1.15], dtype=np.float32)
    return rgb


def _water(
    rng: np.random.Generator, shape: tuple[int, int], unit: float, water: np.ndarray,
    palette: Look,
) -> np.ndarray:
    """Water of the look's colours, with ripples, glitter and pale shallows."""
    base = np.array(palette.water[rng.integers(len(palette.water))], dtype=np.float32)
    # Ripples: fine noise stretched along the wind direction.
    white = rng.standard_normal(shape).astype(np.float32)
    ripples = ndimage.gaussian_filter(white, sigma=(0.7 * unit, 3.5 * unit))
    ripples = ndimage.rotate(ripples, rng.uniform(-40, 40), reshape=False, mode="reflect", order=1)
    ripples /= ripples.std() + 1e-6
    swell = _noise(rng, shape, 40 * unit)
    rgb = base * (1 + 0.10 * ripples + 0.08 * swell)[..., None]

    # Shallows: towards the shore the bottom shows through, pale sandy green.
    depth = ndimage.distance_transform_edt(water)
    reach = rng.uniform(6, 22) * unit * (1 + 0.5 * _noise(rng, shape, 30 * unit))
    shallow = np.clip(np.exp(-depth / np.maximum(reach, 1)), 0, 1)[..., None] * rng.uniform(
        0.5, 0.9
    )
    rgb = (1 - shallow) * rgb + shallow * np.array([0.50, 0.55, 0.45], dtype=np.float32)

    # Glitter: near-white specks on ripple crests inside a sunlit zone.
    zone = _noise(rng, shape, 60 * unit) > rng.uniform(0.0, 0.8)
    crest = ripples > np.quantile(ripples, rng.uniform(0.93, 0.985))
    glint = zone & crest
    rgb[glint] = np.clip(rgb[glint] + rng.uniform(0.45, 0.7), 0, 1)
    return rgb.astype(np.float32)
