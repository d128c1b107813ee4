"""The typed configuration schema: five sections, their defaults, types and ranges.

One schema with five sections (``data``, ``model``, ``train``, ``predict``, ``postprocess``).
Every key has a default, so an empty YAML file is a valid config. Precedence, lowest first:
schema defaults (or a run's saved config), the file a YAML file names with ``extends:`` (a
top-level key read by the loader, not part of this schema: ``extends: photo.yaml``, relative to
the file naming it, lets a variant say only what differs), the YAML file, then
``--set section.key=value``.

Validation is pydantic's (strict types, ranges, ``Literal`` choices, unknown keys forbidden);
:mod:`segmenter.config.load` merges the layers and turns its errors into one line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    upright: bool | Literal["auto"] = Field(
        False,
        description="Photos have a fixed up (oblique views with a horizon, sky above water): "
        "training never turns patches upside down or sideways and flip TTA only mirrors "
        "left-right. False for aerial views, which have no up; auto: training decides from "
        "where its labels put water, and the run keeps the decision.",
    )
    bands: list[int] | None = Field(
        None, min_length=3, max_length=3,
        description="Rasters: the 3 bands (1-based) read as R, G, B (null = the first three).",
    )
    nodata: float | None = Field(
        None, description="Rasters: nodata value (null = the file's nodata value or mask).",
    )
    raster_max: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Rasters: value read as 1.0 (null = 255 for 8-bit, 2^bits-1 for the bits "
        "wider integer data use).",
    )
    sample: SampleConfig = Field(default_factory=SampleConfig)

    @property
    def is_upright(self) -> bool:
        """``upright`` as training and prediction apply it: ``auto`` is decided by training
        (and saved in the run), so an undecided ``auto`` counts as aerial."""
        return self.upright is True

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
    filter_growth: float = Field(
        1.0, ge=1.0, le=4.0,
        description="Kernels grow by this factor at each pooling level (2 doubles them as the "
        "resolution halves, as U-Nets do); coarse levels cost little compute and see the "
        "context. 1 = the same number at every level (the notebook).",
    )
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
    skips: bool = Field(
        False,
        description="U-Net-style skip connections: each decoder level also reads the encoder's "
        "map of the same size, so edges lost to pooling come back.",
    )
    row_channel: bool | Literal["auto"] = Field(
        "auto",
        description="Give the network each pixel's height in the photo (0 top, 1 bottom) as a "
        "fourth input, so it learns where sky, horizon and water sit in oblique photos. Upright "
        "photos only; auto: on when data.upright is (or auto decides) true, and the run keeps "
        "the decision.",
    )

    @property
    def has_row_channel(self) -> bool:
        """``row_channel`` as the network is built: ``auto`` is decided by training (and saved
        in the run), so an undecided ``auto`` counts as off."""
        return self.row_channel is True


class AugmentConfig(_Section):
    """Augmentation of training patches (never applied to validation or prediction)."""

    flip: bool = Field(
        True, description="Random left-right and up-down flips (left-right only if data.upright)."
    )
    rotate90: bool = Field(
        True, description="Random rotations by multiples of 90 degrees (off if data.upright)."
    )
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
    scale: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Max random zoom: a patch covers width x s photo pixels, s log-uniform in "
        "[1/(1+z), 1+z], resampled bilinearly to the patch width (other flying heights, lenses).",
    )
    tilt: float = Field(
        0.0,
        ge=0,
        le=45,
        description="Max random turn of a patch, in degrees either way (cameras rolled on ships "
        "and aircraft: sloping horizons); the row channel keeps the camera's rows.",
    )


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
    ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Momentum of an exponential moving average of the weights (Polyak "
        "averaging); validation and the saved model use the average, with BatchNorm statistics "
        "measured for it on training patches. 0 = off.",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of patch sampling and weight initialisation."
    )
    init_from: str | None = Field(
        None,
        description="Fine-tuning: a finished run (a folder or an s3:// URL) whose model of "
        "each width starts this run's (weights and BatchNorm statistics; a fresh optimiser). "
        "Its model settings must be this config's. null = random weights.",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    strategy: Literal["auto", "default", "mirrored", "multiworker"] = Field(
        "auto", description="Devices: tf.distribute strategy (DataParallel on JAX)."
    )
    mixed_precision: bool = Field(False, description="mixed_float16 (output in float32).")
    jit_compile: bool = Field(False, description="XLA-compile the train step.")
    tensorboard: bool = Field(False, description="Write TensorBoard logs in the run directory.")


class PredictConfig(_Section):
    """Multi-scale weighted-window inference."""

    widths: list[int] | None = Field(
        None, min_length=1,
        description="Trained widths to predict with (null = every trained width).",
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
    tta: bool = Field(
        False,
        description="Average predictions over flips (test-time augmentation): left-right and "
        "up-down (4 passes), or left-right only if data.upright (2 passes).",
    )
    grey: bool | Literal["auto"] = Field(
        False,
        description="Half the passes see the photo in grey (luma), so its colours count half: "
        "for photos in colours no training photo had. auto: the grey half counts per window, "
        "from nothing where it agrees with the colour half to half where they differ most. No "
        "extra cost with tta (else a second pass); for models trained with "
        "train.augment.greyscale.",
    )
    adapt_norm: float = Field(
        0.0, ge=0, le=1,
        description="Share of the networks' BatchNorm statistics taken from the photo being "
        "predicted (from tiles that cover it once, up to 96 per width), "
        "the rest from training: meets photos in other light and colours partway. 0 = off; "
        "one extra pass over those windows.",
    )
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
        None, ge=0, allow_inf_nan=False,
        description="--vector: simplification tolerance in map units (null = one pixel).",
    )
    scheduler: str | None = Field(
        None,
        description="Dask scheduler to predict on: tcp://HOST:8786, or local:N for N local "
        "worker processes (null = this process only).",
    )


#: most mixtures ``postprocess.n_components`` may list (each costs one fit per photo).
MAX_MIXTURES = 9


class PostprocessConfig(_Section):
    """Turning the probability map into a water mask."""

    method: Literal["gmm", "global", "otsu"] = Field("gmm", description="Thresholding method.")
    n_components: int | list[int] = Field(
        5,
        description="GMM components; a list (e.g. [4, 5, 6]) fits one mixture per count and "
        "calls each pixel water by the majority of their calls.",
    )
    max_iter: int = Field(50, ge=1, le=10_000, description="GMM EM iterations.")
    tol: float = Field(
        1e-3, gt=0, le=1,
        description="GMM: EM stops when the mean log-likelihood per pixel gains less than this "
        "in one iteration (scikit-learn's tol; larger is faster, the mixture coarser).",
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="Probability-of-land threshold.")
    one_class: float = Field(
        0.35, ge=0, lt=0.5,
        description="GMM: bounds the revised threshold to [one_class, 1 - one_class]: a "
        "component whose median probability of land is above 1 - one_class is land the models "
        "are sure of and is never revised to water (nor one below one_class to land); when "
        "every median is beyond the bound the photo is all land (all water). 0 = the notebook's "
        "unbounded revision, which invents water on photos without any.",
    )
    min_purity: float = Field(
        0.0, ge=0, le=1,
        description="GMM: a component in which fewer than this share of the pixels agree with "
        "its class by their own probability mixes both sides; its pixels are called one by one "
        "by the threshold instead of as a whole by colour. 0 = never (the notebook).",
    )
    purity_ramp: float = Field(
        0.0, ge=0, le=1,
        description="GMM: softens the min_purity cut. From min_purity to min_purity + "
        "purity_ramp a component's call and its pixels' own probabilities are blended, so a "
        "pixel the models are sure of keeps its call in a nearly mixed component. 0 = hard cut.",
    )
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

    @field_validator("n_components")
    @classmethod
    def _component_counts(cls, value: int | list[int]) -> int | list[int]:
        counts = value if isinstance(value, list) else [value]
        if not counts:
            raise ValueError("needs at least one count")
        if len(counts) > MAX_MIXTURES:
            raise ValueError(f"at most {MAX_MIXTURES} mixtures (one per count)")
        if any(not 1 <= c <= 64 for c in counts):
            raise ValueError("component counts must be between 1 and 64")
        if len(set(counts)) != len(counts):
            raise ValueError("each component count once (the same count twice is the same fit)")
        return value

    @property
    def component_counts(self) -> list[int]:
        """``n_components`` as a list: one GMM per count (one for a plain int)."""
        return list(self.n_components) if isinstance(self.n_components, list) else [
            self.n_components]


class Config(_Section):
    """The whole configuration: the effective one, after every layer is merged.

    A YAML file may also hold a top-level ``extends: other.yaml``, which the loader resolves
    (:func:`segmenter.config.load.read_layers`) and drops, so it is never a key here, in
    :meth:`to_yaml` or in a run's saved config.
    """

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
