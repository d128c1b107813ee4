"""Data: storage (local / S3 with an on-disk cache), decoding, the Ontario layout, the sample.

Import the sub-modules directly (``from segmenter.data.ontario import load_dataset``); this
package imports nothing itself so that ``segmenter --help`` stays instant.
"""
