"""Configuration: the typed schema (:mod:`.schema`) and how a config is resolved (:mod:`.load`:
layers, ``extends:`` between config files, ``--set``).

Everything a caller needs is importable from here, e.g.
``from segmenter.config import Config, load_config``.
"""

from segmenter.config.load import (
    DuplicateKeyError,
    TooLargeError,
    load_config,
    parse_override,
    read_layers,
    read_yaml,
    safe_load,
)
from segmenter.config.schema import (
    DEFAULT_CACHE_ENV,
    MAX_BATCH,
    MAX_SEED,
    MAX_STEPS,
    MAX_VALIDATION_BYTES,
    MAX_WIDTH,
    MAX_YAML_CHARS,
    MAX_YAML_VALUES,
    AugmentConfig,
    Config,
    DataConfig,
    ModelConfig,
    PostprocessConfig,
    PredictConfig,
    SampleConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_CACHE_ENV",
    "MAX_BATCH",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_VALIDATION_BYTES",
    "MAX_WIDTH",
    "MAX_YAML_CHARS",
    "MAX_YAML_VALUES",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "DuplicateKeyError",
    "ModelConfig",
    "PostprocessConfig",
    "PredictConfig",
    "SampleConfig",
    "TooLargeError",
    "TrainConfig",
    "load_config",
    "parse_override",
    "read_layers",
    "read_yaml",
    "safe_load",
]
