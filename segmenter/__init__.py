"""segmenter: water / not-water segmentation of coastal photographs with Keras."""

__version__ = "0.1.0"
