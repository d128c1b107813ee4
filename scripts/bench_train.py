"""Benchmark: does the tf.data patch pipeline keep the model busy?

For patch widths 32, 64 and 128 at the schema's default depth, filters and batch sizes:

(a) compute ceiling: training steps per second on one batch already in memory as tensors
    (``Dataset.from_tensors(batch).repeat()``: no sampling, no augmentation);
(b) end to end: training steps per second through the real pipeline
    (:func:`segmenter.training.pipeline.training_dataset`, augmentation on) from the decoded
    built-in sample.

Both run through the same compiled model and ``fit``; each is measured ``--repeats`` times,
alternating, and the best rate kept (the machine may be shared). Prints a table, then, last,
``train_pipeline_ratio=<min over widths of b/a>``. Goal on a 2-core CPU: >= 0.9.

    python scripts/bench_train.py [--steps 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rate(model, dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per variant")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from segmenter.config import Config
    from segmenter.data.ontario import load_dataset
    from segmenter.model.losses import get_loss
    from segmenter.model.network import build_model
    from segmenter.training.pipeline import eligible_images, training_dataset

    cfg = Config()
    dataset = load_dataset(cfg.data, progress=False)
    rows = []
    for width in args.widths:
        batch = cfg.train.widths.get(width) or max(1, 65536 // (width * width))
        items = eligible_images(dataset.train, width)
        keras.utils.set_random_seed(0)
        model = build_model(cfg.model)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss(cfg.train.loss))
        real = training_dataset(items, width, batch, seed=0, steps=10**9,
                                augment=cfg.train.augment)
        images, lands = next(iter(real))
        memory = tf.data.Dataset.from_tensors((images, lands)).repeat()
        model.fit(memory.take(5), epochs=1, verbose=0, shuffle=False)  # trace once
        model.fit(real.take(5), epochs=1, verbose=0, shuffle=False)
        ceiling, pipeline = [], []
        for _ in range(args.repeats):
            ceiling.append(_rate(model, memory, args.steps))
            pipeline.append(_rate(model, real, args.steps))
        a, b = max(ceiling), max(pipeline)
        rows.append((width, batch, a, b, b / a))
        print(f"width {width}: a={a:.2f} b={b:.2f} steps/s", flush=True)

    print()
    print(f"{'width':>5} {'batch':>5} {'(a) in-memory steps/s':>22} {'(b) pipeline steps/s':>21}"
          f" {'b/a':>6}")
    for width, batch, a, b, ratio in rows:
        print(f"{width:>5} {batch:>5} {a:>22.2f} {b:>21.2f} {ratio:>6.3f}")
    print(f"train_pipeline_ratio={min(np.array([r[4] for r in rows])):.3f}")


if __name__ == "__main__":
    main()
