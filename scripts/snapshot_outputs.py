"""Fingerprints of what `predict` and `evaluate` write, to prove a refactor changed nothing.

Predicts and evaluates with trained runs and prints (or saves) the SHA-256 of every mask,
probability map and overlay, and every metric of evaluation.json, so that two snapshots taken
before and after a change of the code can be compared byte for byte:

* the generated sample's test scenes with a run of ``configs/default.yaml`` (predict + evaluate);
* a GeoTIFF mosaic with a nodata collar and hole (a generated scene, tiled), same run;
* ten OASIs ship photos with a run of ``configs/photo.yaml`` (predict + evaluate).

Usage::

    segmenter train --config configs/default.yaml --out RUNS/default
    segmenter train --config configs/photo.yaml --set data.source=../shared/dev/oasis \\
        --set train.steps=150 --out RUNS/photo
    python scripts/snapshot_outputs.py --default-run RUNS/default --photo-run RUNS/photo \\
        --save before.json
    ... change the code ...
    python scripts/snapshot_outputs.py --default-run RUNS/default --photo-run RUNS/photo \\
        --compare before.json

The last line is ``identical=<n>/<n>`` (exit 0) or names the files that differ (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUTPUT_SUFFIXES = (".png", ".tif", ".geojson")


def segmenter(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "segmenter", "-q", *args], check=True)


def mosaic(path: Path) -> Path:
    """A 900 x 700 RGB GeoTIFF (UTM 17N) with nodata 0 on a collar and a hole."""
    import rasterio
    from rasterio.transform import from_origin

    from segmenter.data.sample import make_scene

    image = make_scene(3, 900, 7).image[:700]
    bands = np.moveaxis(image, -1, 0).copy()
    bands[bands == 0] = 1
    bands[:, :, :40] = 0
    bands[:, 500:, 650:] = 0
    profile = {"driver": "GTiff", "width": bands.shape[2], "height": bands.shape[1], "count": 3,
               "dtype": "uint8", "crs": "EPSG:32617", "nodata": 0, "tiled": True,
               "blockxsize": 256, "blockysize": 256,
               "transform": from_origin(612_345.0, 4_845_678.0, 0.25, 0.25)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return path


def oasis_subset(source: Path, folder: Path, n: int) -> Path:
    """The first n labelled test photos of an OASIs folder, as a data source with test/."""
    test = folder / "test"
    test.mkdir(parents=True)
    photos = sorted(p for p in (source / "test").glob("*.jpg"))[:n]
    for photo in photos:
        shutil.copy(photo, test / photo.name)
        shutil.copy(source / "test" / f"{photo.stem}_label.png", test / f"{photo.stem}_label.png")
    return folder


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def untimed(value: object) -> object:
    """``value`` without its timings (keys ending in ``seconds``), which vary run to run."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def fingerprints(folder: Path, prefix: str) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in OUTPUT_SUFFIXES:
            found[f"{prefix}/{path.relative_to(folder)}"] = digest(path)
    report = folder / "evaluation.json"
    if report.exists():
        data = json.loads(report.read_text())
        text = json.dumps(untimed({k: data[k] for k in ("images", "overall")}), sort_keys=True)
        found[f"{prefix}/evaluation.json[metrics]"] = hashlib.sha256(text.encode()).hexdigest()
    return found


def snapshot(default_run: Path, photo_run: Path, oasis: Path, work: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    sample = work / "samples"
    segmenter("sample-data", str(sample))
    segmenter("predict", "--run", str(default_run), str(sample / "test"), "--out",
              str(work / "sample_pred"))
    found.update(fingerprints(work / "sample_pred", "sample/predict"))
    segmenter("evaluate", "--run", str(default_run), "--data", str(sample),
              "--out", str(work / "sample_eval"))
    found.update(fingerprints(work / "sample_eval", "sample/evaluate"))
    tif = mosaic(work / "mosaic.tif")
    segmenter("predict", "--run", str(default_run), str(tif), "--out", str(work / "mosaic_pred"),
              "--set", "predict.tile_size=256", "--vector")
    found.update(fingerprints(work / "mosaic_pred", "mosaic/predict"))
    photos = oasis_subset(oasis, work / "oasis", 10)
    segmenter("predict", "--run", str(photo_run), str(photos / "test"), "--out",
              str(work / "oasis_pred"))
    found.update(fingerprints(work / "oasis_pred", "oasis/predict"))
    segmenter("evaluate", "--run", str(photo_run), "--data", str(photos),
              "--out", str(work / "oasis_eval"))
    found.update(fingerprints(work / "oasis_eval", "oasis/evaluate"))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default-run", type=Path, required=True)
    parser.add_argument("--photo-run", type=Path, required=True)
    parser.add_argument("--oasis", type=Path, default=REPO.parent / "shared/dev/oasis")
    parser.add_argument("--save", type=Path, help="write the fingerprints to this JSON file")
    parser.add_argument("--compare", type=Path, help="compare with a saved snapshot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = snapshot(args.default_run, args.photo_run, args.oasis, Path(tmp))
    if args.save:
        args.save.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    if not args.compare:
        print(f"files={len(found)}")
        return 0
    before = json.loads(args.compare.read_text())
    differ = sorted(k for k in before.keys() | found.keys() if before.get(k) != found.get(k))
    for key in differ:
        print(f"differs: {key}")
    print(f"identical={len(before) - len(differ)}/{len(before)}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
