"""The summary of an output folder: ``predictions.json`` and ``predictions.csv``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from segmenter.fileio import write_json, write_text

#: summary file names inside the output folder.
SUMMARY_JSON = "predictions.json"
SUMMARY_CSV = "predictions.csv"
CSV_FIELDS = (
    "input", "stem", "status", "height", "width", "water_fraction", "method", "threshold",
    "seconds", "error",
)



def write_summary(out_dir: str | Path, records: list[dict[str, Any]], extra: dict[str, Any]
                  ) -> tuple[Path, Path]:
    """Write ``predictions.json`` (``extra`` + every record) and ``predictions.csv``."""
    out = Path(out_dir)
    json_path, csv_path = out / SUMMARY_JSON, out / SUMMARY_CSV
    write_json(json_path, {**extra, "images": records})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = dict(record)
        if "size" in row:
            row["height"], row["width"] = row["size"]
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_FIELDS})
    write_text(csv_path, buffer.getvalue())
    return json_path, csv_path
