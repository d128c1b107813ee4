"""The typed configuration schema, YAML loading, ``--set`` overrides and validation.

One schema with five sections (``data``, ``model``, ``train``, ``predict``, ``postprocess``).
Every key has a default, so an empty YAML file is a valid config. Precedence, lowest first:
schema defaults (or a run's saved config), the YAML file, then ``--set section.key=value``.

Validation is pydantic's (strict types, ranges, ``Literal`` choices, unknown keys forbidden);
this module turns its errors into one line that names the file, the key path and what is
allowed, and suggests the nearest valid key for a typo.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from segmenter.errors import ConfigError

DEFAULT_CACHE_ENV = "SEGMENTER_CACHE"

# Limits the code can honour (numpy and Keras seeds are 32-bit; counts beyond these would run
# for years or exhaust memory before doing anything useful).
MAX_SEED = 2**32 - 1
MAX_STEPS = 10_000_000
MAX_BATCH = 100_000
MAX_WIDTH = 8192
#: Memory the fixed validation patches of one width may take (float32 photo + label).
MAX_VALIDATION_BYTES = 4 * 2**30
#: A config is a few kilobytes: a document or alias expansion far larger is an attack or an
#: accident (a YAML "billion laughs" takes minutes and gigabytes to reach the validator).
MAX_YAML_CHARS = 1_000_000
MAX_YAML_VALUES = 100_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class SampleConfig(_Section):
    """The built-in generated sample (used when ``data.source`` is ``sample``)."""

    n: int = Field(16, ge=2, le=10_000, description="Number of generated scenes.")
    size: int = Field(512, ge=64, le=8192, description="Width of each photo in pixels.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the scene generator.")


class DataConfig(_Section):
    """Where photos and labels come from and how they are prepared."""

    source: str = Field(
        "sample", description="A local folder, s3://bucket/prefix, or 'sample'.", min_length=1
    )
    train_dir: str = Field("train", description="Sub-folder of the source with training pairs.")
    test_dir: str = Field("test", description="Sub-folder with test pairs ('' = split by seed).")
    anon: bool = Field(True, description="S3: anonymous access (public buckets).")
    endpoint_url: str | None = Field(None, description="S3: endpoint of an S3-compatible server.")
    cache_dir: str | None = Field(
        None, description="Local cache of remote files (default $SEGMENTER_CACHE or ~/.cache)."
    )
    scale: float = Field(0.5, gt=0, le=1, description="Resize factor applied to photos/labels.")
    water_class: Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1)] = Field(
        2, description="Water in .mat labels: a class number, or a name looked up in 'labels'."
    )
    label_water_value: int = Field(
        255, ge=0, le=65535, description="Water in <stem>_label.png images: this pixel value."
    )
    test_ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of pairs held out for testing when there is no test/."
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the train/test split when there is no test/."
    )
    skip_bad: bool = Field(False, description="Skip unreadable pairs with a warning.")
    bands: list[int] | None = Field(
        None, min_length=3, max_length=3,
        description="Rasters: the 3 bands (1-based) read as R, G, B (null = the first three).",
    )
    nodata: float | None = Field(
        None, description="Rasters: nodata value (null = the file's nodata value or mask).",
    )
    raster_max: float | None = Field(
        None, gt=0,
        description="Rasters: value read as 1.0 (null = 255 for 8-bit, 2^bits-1 for the bits "
        "wider integer data use).",
    )
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @field_validator("bands")
    @classmethod
    def _bands_from_one(cls, bands: list[int] | None) -> list[int] | None:
        if bands is not None and min(bands) < 1:
            raise ValueError("band numbers start at 1")
        return bands


class ModelConfig(_Section):
    """The residual encoder-decoder."""

    depth: int = Field(3, ge=1, le=7, description="Pooling levels; widths must divide by 2^depth.")
    filters: int = Field(16, ge=1, le=1024, description="Convolution kernels per layer.")
    kernel_size: int = Field(3, ge=1, le=15, description="Convolution kernel size.")
    upsampling: Literal["bilinear", "transpose"] = Field(
        "bilinear", description="Decoder upsampling: bilinear resize or transposed convolution."
    )
    activation: Literal["sigmoid", "linear"] = Field(
        "sigmoid", description="Output: probability of land (sigmoid) or raw value (linear)."
    )
    input_norm: Literal["fixed", "window"] = Field(
        "fixed",
        description="Input scaling: fixed [0,1] -> [-1,1], or per window (each channel's mean "
        "removed, divided by the window's spread): drops a photo's overall colour and light.",
    )


class AugmentConfig(_Section):
    """Augmentation of training patches (never applied to validation or prediction)."""

    flip: bool = Field(True, description="Random horizontal and vertical flips.")
    rotate90: bool = Field(True, description="Random rotations by multiples of 90 degrees.")
    brightness: float = Field(0.1, ge=0, le=1, description="Max random brightness shift.")
    contrast: float = Field(0.1, ge=0, le=1, description="Max random relative contrast change.")
    gain: float = Field(
        0.0, ge=0, le=1, description="Max random change of each colour channel's gain (casts)."
    )
    hue: float = Field(0.0, ge=0, le=180, description="Max random hue rotation, in degrees.")
    saturation: float = Field(0.0, ge=0, le=1, description="Max random relative saturation change.")
    greyscale: float = Field(0.0, ge=0, le=1, description="Share of patches turned grey.")
    gamma: float = Field(
        0.0, ge=0, le=2, description="Max random gamma change: gamma in [1/(1+g), 1+g]."
    )
    blur: float = Field(0.0, ge=0, le=4, description="Max Gaussian blur sigma, in pixels.")
    noise: float = Field(0.0, ge=0, le=0.5, description="Max std of additive Gaussian noise.")


class TrainConfig(_Section):
    """Training: one model per patch width."""

    widths: dict[int, int] = Field(
        default_factory=lambda: {32: 64, 64: 32, 128: 16},
        description="Patch width -> batch size; one model is trained per width.",
    )
    steps: int = Field(300, ge=1, le=MAX_STEPS, description="Training batches per width.")
    validate_every: int = Field(
        50, ge=1, le=MAX_STEPS, description="Steps between validations/checkpoints."
    )
    validation_batches: int = Field(
        2, ge=1, le=1000, description="Fixed test batches per validation."
    )
    loss: Literal["mse", "bce", "dice", "bce_dice"] = Field("bce_dice", description="Loss.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="LR schedule.")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of patch sampling and weight initialisation."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    strategy: Literal["auto", "default", "mirrored", "multiworker"] = Field(
        "auto", description="tf.distribute strategy."
    )
    mixed_precision: bool = Field(False, description="mixed_float16 (output in float32).")
    jit_compile: bool = Field(False, description="XLA-compile the train step.")
    tensorboard: bool = Field(False, description="Write TensorBoard logs in the run directory.")


class PredictConfig(_Section):
    """Multi-scale weighted-window inference."""

    widths: list[int] | None = Field(
        None, description="Trained widths to predict with (null = every trained width)."
    )
    overlap: float = Field(0.5, ge=0, lt=1, description="Overlap of neighbouring grid windows.")
    batch_size: int = Field(
        16, ge=1, le=MAX_BATCH,
        description="Windows per inference batch (at least; small windows are grouped).",
    )
    sampling: Literal["grid", "random"] = Field(
        "grid", description="Regular grid, or the notebook's random window positions."
    )
    random_windows: dict[int, int] = Field(
        default_factory=lambda: {16: 4000, 32: 2000, 64: 1000, 128: 500, 256: 250},
        description="Window count per width when sampling is 'random'.",
    )
    tta: bool = Field(False, description="Average predictions over flips (test-time augmentation).")
    merge: Literal["mean", "weighted"] = Field(
        "mean", description="Merge scales by mean, or weighted by each width's validation score."
    )
    rescale: Literal["none", "minmax"] = Field(
        "none", description="Rescale the merged map to [0, 1] (minmax, as in the notebook)."
    )
    save_float: bool = Field(False, description="Also save the float probability map (.npy).")
    save_scales: bool = Field(False, description="Also save each width's probability map.")
    tile_size: int = Field(
        2048, ge=64, le=65536,
        description="Rasters: tile edge in pixels; memory follows it, not the raster's size.",
    )
    cog: bool = Field(
        True, description="Rasters: write Cloud-Optimized GeoTIFFs (false: tiled GeoTIFFs).",
    )
    overview_size: int = Field(
        2048, ge=64, le=16384, description="Rasters: longest side of <stem>_overlay.png.",
    )
    vector_tolerance: float | None = Field(
        None, ge=0,
        description="--vector: simplification tolerance in map units (null = one pixel).",
    )
    scheduler: str | None = Field(
        None,
        description="Dask scheduler to predict on: tcp://HOST:8786, or local:N for N local "
        "worker processes (null = this process only).",
    )


class PostprocessConfig(_Section):
    """Turning the probability map into a water mask."""

    method: Literal["gmm", "global", "otsu"] = Field("gmm", description="Thresholding method.")
    n_components: int = Field(5, ge=1, le=64, description="GMM components.")
    max_iter: int = Field(50, ge=1, le=10_000, description="GMM EM iterations.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Probability-of-land threshold.")
    subsample: int = Field(
        200_000, ge=100, le=100_000_000,
        description="Most pixels the GMM is fitted on (large photos).",
    )
    subsample_share: float | None = Field(
        0.05, gt=0, le=1,
        description="Share of a photo's pixels the GMM is fitted on, at least subsample_min and "
        "at most subsample (null: always subsample); small photos fit in a fraction of the time.",
    )
    subsample_min: int = Field(
        20_000, ge=100, le=100_000_000,
        description="Fewest pixels the GMM is fitted on (when the photo has them).",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the GMM subsample and initialisation."
    )
    fill_holes: float = Field(
        0.0, ge=0, le=0.1,
        description="Land islands inside water smaller than this share of the photo become "
        "water (glints, foam); 0 = off.",
    )
    remove_specks: float = Field(
        0.0, ge=0, le=0.1,
        description="Water regions smaller than this share of the photo become land (shadows, "
        "dark roofs); 0 = off.",
    )


class Config(_Section):
    """The whole configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python containers, ready for YAML."""
        return self.model_dump(mode="python")

    def to_yaml(self) -> str:
        """The config as YAML that :func:`load_config` reads back to an equal config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: Config | None = None,
) -> Config:
    """Resolve a config: ``base`` (default: schema defaults) < YAML file < ``--set`` overrides.

    All layers are merged first and validated once, so a later layer can repair an earlier one
    (``--set model.depth=4 --set train.widths={64: 8}`` works in either order). An error names
    the layer that supplied the offending key.

    Raises:
        ConfigError: one line naming the file (or ``--set``), the key path and what is allowed.
    """
    merged = (base or Config()).to_dict()
    origins: dict[tuple[Any, ...], tuple[int, str]] = {}
    if path is not None:
        merged = _merge(merged, read_yaml(path), Config, origins, (), (1, str(path)))
    for item in overrides:
        key, text = parse_override(item)
        parts = _set_path(merged, key, text, origin=f"--set {item}")
        origins[tuple(parts)] = (2, "--set")
    return _validate(merged, origins, fallback=str(path) if path is not None else "config")


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats such as ``1e-3`` as numbers."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice (YAML silently keeps the last)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r} (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class TooLargeError(yaml.YAMLError):
    """A document (or the values its aliases expand to) far larger than any config."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    """SafeLoader's mapping constructor, refusing a key given twice in one mapping."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        except TypeError:  # an unhashable key: the constructor reports it
            continue
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _expanded_size(value: Any, memo: dict[int, int]) -> int:
    """How many values ``value`` holds once every alias is expanded (shared nodes counted
    once per use, computed once per node, so a billion-laughs document is measured fast)."""
    if not isinstance(value, dict | list):
        return 1
    key = id(value)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts as itself
        items = value.values() if isinstance(value, dict) else value
        memo[key] = 1 + sum(_expanded_size(item, memo) for item in items)
    return memo[key]


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats (``1e-3``); never builds objects.

    Refuses duplicate keys and documents over :data:`MAX_YAML_CHARS` characters or
    :data:`MAX_YAML_VALUES` values after alias expansion (raised as ``yaml.YAMLError``).
    """
    if len(text) > MAX_YAML_CHARS:
        raise TooLargeError(f"{len(text):,} characters; a config is at most {MAX_YAML_CHARS:,}")
    value = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    if _expanded_size(value, {}) > MAX_YAML_VALUES:
        raise TooLargeError(
            f"its aliases expand to more than {MAX_YAML_VALUES:,} values (a YAML alias bomb?)"
        )
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; syntax errors name the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        raw = safe_load(text)
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"{path}:{exc.second}: duplicate key '{exc.key}' (first on line {exc.first}); "
            "YAML would keep only the last"
        ) from None
    except TooLargeError as exc:
        raise ConfigError(f"{path}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {_kind(raw)}")
    return raw


def parse_override(item: str) -> tuple[str, str]:
    """Split ``section.key=value`` into the dotted key and the value's text."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected section.key=value")
    return key, text


def _parse_value(text: str, annotation: Any) -> Any:
    """A ``--set`` value: text for string keys (``data.source=2024``), YAML for the rest."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        unquoted = stripped[1:-1]  # --set 'data.source="2024"' means the text 2024
    else:
        unquoted = stripped
    if annotation is str:
        return unquoted
    if annotation == (str | None):
        return None if stripped in {"null", "~", ""} else unquoted
    if not stripped:
        return ""
    try:
        return safe_load(text)
    except yaml.YAMLError:
        return text


def _merge(
    base: dict[str, Any],
    update: dict[str, Any],
    schema: type[BaseModel],
    origins: dict[tuple[Any, ...], tuple[int, str]],
    prefix: tuple[Any, ...],
    origin: tuple[int, str],
) -> dict:
    """Deep-merge ``update`` into ``base`` through sections; other values are replaced whole.

    A mapping such as ``train.widths`` given in YAML replaces the default mapping, so a file that
    lists two widths trains two widths. An empty section (``train:``) changes nothing. Unknown
    keys are carried along for validation to reject. ``origins`` records who set each key.
    """
    out = dict(base)
    for key, value in update.items():
        sub = _section_type(schema, key)
        if sub is not None and value is None:
            continue
        if sub is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, sub, origins, (*prefix, key), origin)
        else:
            out[key] = value
            origins[(*prefix, key)] = origin
    return out


def _section_type(schema: type[BaseModel], key: Any) -> type[BaseModel] | None:
    field = schema.model_fields.get(key) if isinstance(key, str) else None
    ann = field.annotation if field else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _set_path(tree: dict[str, Any], dotted: str, text: str, origin: str) -> list[Any]:
    parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node: Any = tree
    schema: type[BaseModel] | None = Config
    for depth, part in enumerate(parts[:-1]):
        if schema is not None and isinstance(part, str) and part not in schema.model_fields:
            raise ConfigError(_unknown_key_message(origin, parts[: depth + 1], schema))
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is not None:
                where = ".".join(map(str, parts[: depth + 1]))
                raise ConfigError(f"{origin}: {where} is a {_kind(node[part])}, not a section")
            node[part] = {}
        schema = _section_type(schema, part) if schema is not None else None
        node = node[part]
    last = parts[-1]
    annotation = None
    if schema is not None and isinstance(last, str):
        if last not in schema.model_fields:
            raise ConfigError(_unknown_key_message(origin, parts, schema))
        annotation = schema.model_fields[last].annotation
    node[last] = _parse_value(text, annotation)
    return parts


def _validate(
    tree: dict[str, Any], origins: dict[tuple[Any, ...], tuple[int, str]], fallback: str
) -> Config:
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        loc = _clean_loc(list(errors[0].get("loc", ())))
        origin = _origin_of([tuple(loc)], origins, fallback)
        raise ConfigError(_format_error(errors, origin)) from None
    problem = _consistency_problem(cfg)
    if problem is not None:
        keys, message = problem
        raise ConfigError(f"{_origin_of(keys, origins, fallback)}: {message}")
    return cfg


def _origin_of(
    keys: list[tuple[Any, ...]], origins: dict[tuple[Any, ...], tuple[int, str]], fallback: str
) -> str:
    """The highest-precedence layer that set any of ``keys`` (or a key inside/around them)."""
    best: tuple[int, str] | None = None
    for key in keys:
        for set_key, origin in origins.items():
            n = min(len(key), len(set_key))
            if key[:n] == set_key[:n] and (best is None or origin[0] > best[0]):
                best = origin
    return best[1] if best else fallback


def _consistency_problem(cfg: Config) -> tuple[list[tuple[Any, ...]], str] | None:
    """Rules that span keys (widths the network can take): the keys involved and a message."""
    multiple = 2**cfg.model.depth
    depth = ("model", "depth")
    if not cfg.train.widths:
        return [("train", "widths")], "train.widths: at least one patch width is needed"
    for width, batch in cfg.train.widths.items():
        key = ("train", "widths", width)
        if width < multiple or width % multiple:
            return [key, depth], (
                f"train.widths.{width}: patch width must be a positive multiple of "
                f"2^model.depth = {multiple} (model.depth = {cfg.model.depth})"
            )
        if width > MAX_WIDTH:
            return [key], f"train.widths.{width}: patch width must be <= {MAX_WIDTH}"
        if batch < 1:
            return [key], f"train.widths.{width}: batch size must be >= 1 (got {batch})"
        if batch > MAX_BATCH:
            return [key], f"train.widths.{width}: batch size must be <= {MAX_BATCH} (got {batch})"
        needed = cfg.train.validation_batches * batch * width * width * 4 * 4
        if cfg.train.validation_batches > 1 and needed > MAX_VALIDATION_BYTES:
            return [("train", "validation_batches"), key], (
                f"train.validation_batches: {cfg.train.validation_batches} batches of "
                f"{batch} patches of {width} px would hold {needed / 2**30:.1f} GiB in memory "
                f"(limit {MAX_VALIDATION_BYTES / 2**30:.0f} GiB); lower it or the batch size"
            )
    for width in cfg.predict.widths or []:
        if width < multiple or width % multiple or width > MAX_WIDTH:
            return [("predict", "widths"), depth], (
                f"predict.widths: {width} is not a positive multiple of "
                f"2^model.depth = {multiple} up to {MAX_WIDTH}"
            )
    for width, count in cfg.predict.random_windows.items():
        if count < 1 or width < 1 or count > 10_000_000 or width > MAX_WIDTH:
            return [("predict", "random_windows", width)], (
                f"predict.random_windows.{width}: width must be 1..{MAX_WIDTH} and window "
                f"count 1..10000000 (got {count})"
            )
    return None


def _format_error(errors: list[dict[str, Any]], origin: str) -> str:
    err = errors[0]
    raw_loc = list(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return _unknown_key_message(origin, raw_loc, _schema_at(raw_loc[:-1]))
    loc = _clean_loc(raw_loc)
    where = ".".join(str(p) for p in loc).replace(".[key]", " (a key)") or "(top level)"
    # A union (``int | str``) fails once per member: say every way the value could be right.
    messages = []
    for other in errors:
        if _clean_loc(list(other.get("loc", ()))) == loc:
            text = _lower_first(str(other.get("msg", "invalid value")))
            if text not in messages:
                messages.append(text)
    message = " or ".join(messages)
    if kind in {"model_type", "model_attributes_type", "dict_type"} and loc:
        message = "must be a mapping of keys"
    shown = err.get("input")
    got = "" if kind == "missing" else f" (got {shown!r})"
    if isinstance(shown, dict | list) and len(repr(shown)) > 60:
        got = f" (got a {_kind(shown)})"
    return f"{origin}: {where}: {message}{got}"


def _clean_loc(loc: list[Any]) -> list[Any]:
    """Drop pydantic's union-member tags (``int``, ``str``) that follow a leaf key."""
    out: list[Any] = []
    schema: type[BaseModel] | None = Config
    for i, part in enumerate(loc):
        if schema is not None:
            out.append(part)
            schema = _section_type(schema, part)
        elif isinstance(part, int) or part == "[key]":
            out.append(part)
        elif i + 1 < len(loc) and loc[i + 1] == "[key]":
            out.append(part)
    return out


def _unknown_key_message(origin: str, loc: list[Any], schema: type[BaseModel] | None) -> str:
    key = loc[-1]
    where = ".".join(str(p) for p in loc)
    valid = list(schema.model_fields) if schema is not None else []
    hint = ""
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if close:
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + [close[0]])}'?"
    allowed = f" (valid keys: {', '.join(valid)})" if valid and not close else ""
    return f"{origin}: {where}: unknown key{hint}{allowed}"


def _schema_at(loc: list[Any]) -> type[BaseModel] | None:
    schema: type[BaseModel] | None = Config
    for part in loc:
        if schema is None:
            return None
        schema = _section_type(schema, part)
    return schema


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string"}.get(type(value), type(value).__name__)
