"""What ``segmenter predict`` writes: names (which files a stem owns), photo PNGs, GeoTIFFs
and vectors, the summary, and the store (a folder or an fsspec URL, published atomically).

Every file is written atomically, so an interrupted run never leaves a half-written file that
looks finished. Every user-facing output names its class: ``water_prob`` is the probability of
*water* (``1 - land_prob``), ``water_mask`` marks water.
"""
