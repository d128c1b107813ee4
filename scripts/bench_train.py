"""Benchmark: does the patch pipeline keep the model busy, on the chosen Keras backend?

For each patch width (default 32, 64 and 128) at the schema's default depth, filters and batch
sizes:

(a) compute ceiling: training steps per second on one batch already on the device, given again
    and again (no sampling, no augmentation);
(b) end to end: training steps per second through the real pipeline
    (:func:`segmenter.training.pipeline.training_dataset`, augmentation on) from the decoded
    built-in sample.

Both run through the same compiled model and ``fit``; each is measured ``--repeats`` times,
alternating, and the best rate kept (the machine may be shared). Prints a table with the
megapixels per second of each, then, last, ``train_pipeline_ratio=<min over widths of b/a>``.
Goal: >= 0.9 on a CPU with each backend, >= 0.8 on a GPU.

    python scripts/bench_train.py [--backend jax] [--steps 40] [--repeats 2] [--widths 32 64]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rate(model, batches, steps: int) -> float:
    start = time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return steps / (time.perf_counter() - start)


def measure(cfg, dataset, widths: list[int], steps: int, repeats: int) -> list[tuple]:
    """Per width: (width, batch, (a) steps/s, (b) steps/s, (a) MP/s, (b) MP/s, b/a)."""
    import keras

    from segmenter.training.loop import compiled_model
    from segmenter.training.pipeline import PatchSource, eligible_images, training_dataset

    total = steps * (repeats + 2) + 20
    rows = []
    for width in widths:
        batch = cfg.train.widths.get(width) or max(1, 65536 // (width * width))
        source = PatchSource.from_images(eligible_images(dataset.train, width),
                                         row_channel=cfg.model.has_row_channel)
        keras.utils.set_random_seed(0)
        model = compiled_model(cfg, None)

        def real(source=source, width=width, batch=batch):
            return training_dataset(source, width, batch, seed=0, steps=total,
                                    augment=cfg.train.augment, upright=cfg.data.is_upright)

        images, lands = next(iter(real()))  # one batch, on the device
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            memory = tf.data.Dataset.from_tensors((images, lands)).repeat()
        else:
            memory = (pair for pair in itertools.repeat((images, lands)))  # fit takes generators
        model.fit(real(), epochs=1, steps_per_epoch=5, verbose=0, shuffle=False)  # compile once
        ceiling, pipeline = [], []
        for _ in range(repeats):
            ceiling.append(_rate(model, memory, steps))
            pipeline.append(_rate(model, real(), steps))
        a, b = max(ceiling), max(pipeline)
        megapixels = batch * width * width / 1e6
        rows.append((width, batch, a, b, a * megapixels, b * megapixels, b / a))
        print(f"width {width}: a={a:.2f} b={b:.2f} steps/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per variant")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--config", default=None,
                        help="a config whose model, widths and augmentation to use "
                             "(default: the schema's defaults)")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend  # before Keras is imported

    import keras

    from segmenter.config import load_config
    from segmenter.data.ontario import load_dataset
    from segmenter.tfenv import gpu_count, start_tensorflow

    start_tensorflow()
    cfg = load_config(args.config)
    dataset = load_dataset(cfg.data, progress=False)
    device = f"{gpu_count()} GPU(s)" if gpu_count() else "CPU"
    print(f"Keras {keras.__version__} on {keras.backend.backend()}, {device}", flush=True)
    rows = measure(cfg, dataset, args.widths, args.steps, args.repeats)
    print()
    print(f"{'width':>5} {'batch':>5} {'(a) on-device steps/s':>22} {'(b) pipeline steps/s':>21}"
          f" {'(a) MP/s':>9} {'(b) MP/s':>9} {'b/a':>6}")
    for width, batch, a, b, mpa, mpb, ratio in rows:
        print(f"{width:>5} {batch:>5} {a:>22.2f} {b:>21.2f} {mpa:>9.2f} {mpb:>9.2f} {ratio:>6.3f}")
    print(f"backend={keras.backend.backend()}")
    print(f"train_pipeline_ratio={min(r[-1] for r in rows):.3f}")


if __name__ == "__main__":
    main()
