#!/usr/bin/env python
"""Fine-tuning on a few labelled photos of the next flight: what it gains on that flight's others.

``bench_quality.py``'s obx2018 case trains on one flight day and scores two others. A user whose
masks fail on a new flight labels a few of its photos and fine-tunes the run on them
(``segmenter train --init-from RUN``). This measures that, on photos no run trained on:

* **base**: a run trained on obx2018's ``train/`` (``--run``; by default trained here with
  ``configs/photo.yaml``, the folders of ``bench_quality.prepare_obx``).
* **labelled**: ``--labelled`` photos of ``test/`` spread evenly over the flights in time order
  (the time is read from the obx2018 file names); the middle one validates, the rest train.
* **scored**: the other ``test/`` photos taken more than ``--gap`` seconds from every labelled
  one (photos seconds apart show the same ground), and the dry squares
  (``bench_quality.write_dry_photos``) cut from them and from the real photo.
* **tuned**: the base run fine-tuned with ``--config`` (``configs/fine-tune.yaml``) on the
  labelled photos, as a user does (``--with-base``: together with the base run's own training
  and validation photos).

Both runs are scored on the same photos, each with its own config, as ``segmenter evaluate``
does. Printed: the split, then one line per run (the tuned one with its ``train_minutes``)::

    finetune run=base water_iou=<...> threshold_0.5=<...> dry_water_fraction=<...>

Run from the repository root::

    python scripts/bench_finetune.py --work /tmp/ft                       # trains the base too
    python scripts/bench_finetune.py --run W/obx2018/run_recommended --work /tmp/ft --labelled 12
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import bench_quality as bq  # noqa: E402  (the benchmark's case folders, training and scoring)

DEFAULT_TUNE_CONFIG = bq.REPO / "configs" / "fine-tune.yaml"
#: labelled photos of the new flights (one of them validates).
LABELLED = 6
#: scored photos are taken more than this many seconds from every labelled photo.
GAP_SECONDS = 120.0


#: obx2018 names: ``2018-10-07_20.15.44-DSC...`` and ``2018-1007-165320-DSC...``.
_TIMES = (re.compile(r"^(\d{4})-(\d\d)-(\d\d)_(\d\d)\.(\d\d)\.(\d\d)"),
          re.compile(r"^(\d{4})-(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)"))


def shot_time(stem: str) -> datetime:
    """When the photo was taken, from its obx2018 file name.

    Raises:
        BenchError: a name that carries no time.
    """
    for pattern in _TIMES:
        match = pattern.match(stem)
        if match:
            return datetime(*map(int, match.groups()))
    raise bq.BenchError(f"{stem}: no date and time in the name (2018-10-07_20.15.44-... or "
                        "2018-1007-201544-...)")


def split_new_flight(pairs: Sequence[Any], labelled: int, gap: float
                     ) -> tuple[list[Any], Any, list[Any], list[Any]]:
    """The labelled training pairs, the validation pair, the scored pairs and the dropped ones.

    ``labelled`` pairs spread evenly over ``pairs`` in time order; the middle one validates.
    A pair not labelled is scored when it was taken more than ``gap`` seconds from every
    labelled one, and dropped otherwise.
    """
    if not 2 <= labelled < len(pairs):
        raise bq.BenchError(f"--labelled {labelled}: choose 2 to {len(pairs) - 1} of the "
                            f"{len(pairs)} test/ photos")
    ordered = sorted(pairs, key=lambda pair: shot_time(pair.stem))
    picked = bq.evenly(ordered, labelled)
    validation = picked[len(picked) // 2]
    times = [shot_time(pair.stem) for pair in picked]
    scored, dropped = [], []
    for pair in ordered:
        if pair in picked:
            continue
        apart = min(abs((shot_time(pair.stem) - t).total_seconds()) for t in times)
        (scored if apart > gap else dropped).append(pair)
    return [p for p in picked if p is not validation], validation, scored, dropped


def prepare(obx: Path, base_source: Path, work: Path, labelled: int, gap: float,
            with_base: bool, real_dir: Path | None) -> tuple[Path, Path, Path, str]:
    """Write the tuning source, the scored source and the dry photos; returns them and a line
    describing the split."""
    probe = bq.Case("obx2018", obx, obx)
    data_cfg = probe.data_config(obx)
    train, validation, scored, dropped = split_new_flight(
        bq._pairs(obx, "test", data_cfg), labelled, gap)
    tune, scored_dir, dry = work / "tune_source", work / "scored", work / "dry"
    bq._link_pairs(train, obx, tune / "train")
    bq._link_pairs([validation], obx, tune / "test")
    if with_base:
        for sub in ("train", "test"):
            bq._link_pairs(bq._pairs(base_source, sub, data_cfg), base_source, tune / sub)
    bq._link_pairs(scored, obx, scored_dir / "train")
    sources = [(obx, pair) for pair in scored]
    if real_dir is not None and (real_dir / "train").is_dir():
        sources += [(real_dir, pair) for pair in bq._pairs(real_dir, "train", data_cfg)]
    crops = bq.write_dry_photos(sources, dry, data_cfg)
    line = (f"labelled {len(train)} + 1 validating ({', '.join(p.stem for p in train)}; "
            f"{validation.stem}), {'with the base run photos' if with_base else 'alone'}; scored "
            f"{len(scored)}, dropped {len(dropped)} taken within {gap:.0f} s of a labelled one; "
            f"{crops} dry squares")
    return tune, scored_dir, dry, line


def score_line(name: str, overall: dict[str, Any], dry: dict[str, Any],
               minutes: float | None = None) -> str:
    """``finetune run=<name> water_iou=<...> threshold_0.5=<...> dry_water_fraction=<...>``."""
    from segmenter.predict.evaluation import BASELINE

    line = (f"finetune run={name} water_iou={overall['water_iou']:.4f} "
            f"threshold_0.5={overall[BASELINE]['water_iou']:.4f} "
            f"dry_water_fraction={bq.invented_water(dry):.4f}")
    return line if minutes is None else f"{line} train_minutes={minutes:.2f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="base run trained on obx2018's train/ (default: train one here)")
    parser.add_argument("--work", type=Path, required=True, help="new folder for data and runs")
    parser.add_argument("--labelled", type=int, default=LABELLED,
                        help=f"labelled photos of the new flights (default {LABELLED})")
    parser.add_argument("--gap", type=float, default=GAP_SECONDS,
                        help=f"seconds between a scored and a labelled photo (default "
                             f"{GAP_SECONDS:.0f})")
    parser.add_argument("--with-base", action="store_true",
                        help="fine-tune on the labelled photos and the base run's own photos")
    parser.add_argument("--config", type=Path, default=DEFAULT_TUNE_CONFIG,
                        help="fine-tuning config (default configs/fine-tune.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override for the fine-tuning")
    parser.add_argument("--obx", type=Path, default=bq.DEFAULT_OBX,
                        help=f"obx2018 folder (default {bq.DEFAULT_OBX})")
    parser.add_argument("--real", type=Path, default=bq.DEFAULT_REAL,
                        help=f"folder with the real photo, for dry squares (default "
                             f"{bq.DEFAULT_REAL})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return bq.run_script("bench_finetune", _main, parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    from segmenter.errors import RunError
    from segmenter.runs import open_run

    if args.work.exists() and any(args.work.iterdir()):
        raise bq.BenchError(f"--work {args.work}: folder is not empty; choose a new one")
    work = args.work.resolve()
    obx = args.obx.resolve()
    base = args.run.resolve() if args.run is not None else work / "run_base"
    if args.run is None:
        case = bq.prepare_obx(obx, work / "base", quick=False)
        minutes = bq.train_segmenter(bq.DEFAULT_CONFIG, case.train_source, base, [],
                                     "base run (photo.yaml on train/)")
        print(f"base: trained on {case.train_source} in {minutes:.1f} min")
    try:
        base_source = Path(open_run(base).config.data.source)
    except RunError as exc:
        raise bq.BenchError(f"--run: {exc}") from None
    tune, scored, dry, line = prepare(obx, base_source, work, args.labelled, args.gap,
                                      args.with_base, args.real.resolve())
    print(f"split: {line}")
    tuned = work / "run_tuned"
    minutes = bq.train_segmenter(args.config, tune, tuned,
                                 [f"train.init_from={base}", *args.overrides],
                                 f"fine-tuning {base}")
    print(score_line("base", bq.evaluate_segmenter(base, scored),
                     bq.evaluate_segmenter(base, dry)))
    print(score_line("tuned", bq.evaluate_segmenter(tuned, scored),
                     bq.evaluate_segmenter(tuned, dry), minutes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
