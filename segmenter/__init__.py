"""segmenter: water / not-water segmentation of coastal photographs with Keras."""

__version__ = "0.1.0"

# Before anything imports Keras: without TensorFlow installed and no backend chosen, Keras
# would fail to start; this picks the installed one (segmenter.tfenv.keras_backend).
from segmenter.tfenv import keras_backend as _keras_backend  # noqa: E402

_keras_backend()
