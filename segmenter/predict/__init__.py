"""Prediction: windows, stitching, photos, rasters, the water mask, jobs and clusters.

The path of a photo and of a raster through these modules is drawn in docs/architecture.md.
"""
