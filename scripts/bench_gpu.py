"""The GPU check, in one command: train, predict, and print what the device does.

    python scripts/bench_gpu.py [--backend jax] [--steps 300] [--config configs/default.yaml]

On the machine's first GPU (or its CPU when there is none, which is how it is tested):

1. trains the config's widths for ``--steps`` steps into a temporary run with ``segmenter
   train``'s own code, and reports each width's training megapixels per second over the whole
   width (compilation and validation included);
2. measures, per width, the training rate through the patch pipeline against the compiled
   model's own rate on a batch already on the device (``scripts/bench_train.py``):
   ``train_pipeline_ratio``, goal >= 0.8 on a GPU;
3. predicts the built-in sample's test photos and one generated 25-megapixel photo with the
   trained run (``predict_photo``, the code of ``segmenter predict``), after a warm-up;
4. reads the device's peak memory.

The last line is ``device=... train_mps=W:R,... train_pipeline_ratio=... predict_mps=...
peak_gpu_mb=...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent


def device_name() -> str:
    """The first GPU's name on the backend in use, or ``CPU``."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return gpus[0].device_kind if gpus else "CPU"
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def peak_gpu_mb() -> float | None:
    """Peak memory in use on the first GPU since the start, in MB; None without a GPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        stats = gpus[0].memory_stats() if gpus else None
        return stats["peak_bytes_in_use"] / 2**20 if stats else None
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                        default=os.environ.get("KERAS_BACKEND", "jax"),
                        help="Keras backend (default: KERAS_BACKEND, else jax)")
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--steps", type=int, default=300, help="training steps per width")
    parser.add_argument("--bench-steps", type=int, default=50,
                        help="timed steps per pipeline measurement")
    parser.add_argument("--size", type=int, default=5000, help="side of the generated photo")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend  # before Keras is imported

    import keras

    sys.path.insert(0, str(SCRIPTS))
    from bench_predict import generated_photo
    from bench_train import measure

    from segmenter.config import load_config
    from segmenter.data.images import decode_photo
    from segmenter.data.ontario import load_dataset
    from segmenter.data.sample import ensure_sample
    from segmenter.predict.models import load_models
    from segmenter.predict.photo import predict_photo
    from segmenter.runs import open_run
    from segmenter.tfenv import start_tensorflow
    from segmenter.training import train

    start_tensorflow()
    every = max(1, args.steps // 3)
    cfg = load_config(args.config, [f"train.steps={args.steps}",
                                    f"train.validate_every={every}"])
    device = device_name()
    print(f"Keras {keras.__version__} on {keras.backend.backend()}, device {device}", flush=True)
    dataset = load_dataset(cfg.data, progress=False)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        results = train(cfg, run_dir, dataset=dataset, progress=False)
        train_seconds = time.perf_counter() - started
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise SystemExit(f"training failed: {failed[0].message}")
        run = open_run(run_dir)
        train_mps = {}
        for width, batch in cfg.train.widths.items():
            status = run.status(width)
            train_mps[width] = args.steps * batch * width * width / 1e6 / status.seconds

        rows = measure(cfg, dataset, list(cfg.train.widths), args.bench_steps, repeats=2)

        loaded = load_models(run, run.config)
        sample = Path(ensure_sample(cfg.data))
        photos = sorted(p for p in (sample / cfg.data.test_dir).iterdir()
                        if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and "_label" not in p.stem)
        images = [decode_photo(p.read_bytes(), str(p))[0] for p in photos]
        big = Path(tmp) / "photo.jpg"
        generated_photo(args.size, big)
        large = decode_photo(big.read_bytes(), str(big))[0]
        predict_photo(loaded, large[:1024, :1024], run.config)  # compile each width once
        for image in images[:1]:
            predict_photo(loaded, image, run.config)
        started = time.perf_counter()
        for image in images:
            predict_photo(loaded, image, run.config)
        sample_seconds = time.perf_counter() - started
        sample_mp = sum(image.shape[0] * image.shape[1] for image in images) / 1e6
        result = predict_photo(loaded, large, run.config)
        large_mp = large.shape[0] * large.shape[1] / 1e6
        predict_mps = large_mp / result.seconds

    peak = peak_gpu_mb()
    print()
    print(f"training {len(cfg.train.widths)} widths x {args.steps} steps: {train_seconds:.0f} s")
    print(f"{'width':>5} {'batch':>5} {'train MP/s (run)':>17} {'on-device MP/s':>15} "
          f"{'pipeline MP/s':>14} {'ratio':>6}")
    for width, batch, _, _, mpa, mpb, ratio in rows:
        print(f"{width:>5} {batch:>5} {train_mps[width]:>17.2f} {mpa:>15.2f} {mpb:>14.2f} "
              f"{ratio:>6.3f}")
    print(f"sample test photos: {len(images)} ({sample_mp:.2f} MP) in {sample_seconds:.2f} s, "
          f"{sample_mp / sample_seconds:.2f} MP/s")
    print(f"generated photo: {large_mp:.1f} MP in {result.seconds:.2f} s, {predict_mps:.2f} MP/s "
          f"(GMM {result.gmm_seconds:.2f} s)")
    print(f"peak device memory: {'n/a (no GPU)' if peak is None else f'{peak:.0f} MB'}")
    ratio = min(row[-1] for row in rows)
    peak_text = "na" if peak is None else f"{peak:.0f}"
    print(f"device={device.replace(' ', '_')} backend={keras.backend.backend()} "
          + "train_mps=" + ",".join(f"{w}:{m:.1f}" for w, m in train_mps.items())
          + f" train_pipeline_ratio={ratio:.3f} predict_mps={predict_mps:.2f} "
          f"peak_gpu_mb={peak_text}")


if __name__ == "__main__":
    main()
