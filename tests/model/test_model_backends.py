"""A model trained (saved) under TensorFlow predicts the same map under JAX.

Each backend runs in its own process (Keras picks its backend once, at import): the run's model
is loaded with ``safe_mode`` and a photo predicted through the whole photo path (windows, TTA
with grey passes, BatchNorm adaptation, the scale merge); the maps must agree to float rounding.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_run

PREDICT = """
import sys
import numpy as np
import keras
from segmenter.config import load_config
from segmenter.predict.models import load_models
from segmenter.predict.photo import predict_land
from segmenter.runs import open_run

run = open_run(sys.argv[1])
cfg = load_config(None, sys.argv[4:], base=run.config)
loaded = load_models(run, cfg)
image = np.load(sys.argv[2])
land = predict_land(loaded.models, image, cfg).land_prob
np.save(sys.argv[3], land)
print(keras.backend.backend())
"""


def predict_on(backend: str, run: Path, image: Path, out: Path, *overrides: str) -> np.ndarray:
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([sys.executable, "-c", PREDICT, str(run), str(image), str(out),
                           *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == backend
    return np.load(out)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
@pytest.mark.parametrize("settings", [
    ("predict.tta=false",),
    ("predict.tta=true", "predict.grey=auto", "predict.adapt_norm=0.3"),
])
def test_a_model_saved_under_tensorflow_predicts_the_same_map_under_jax(tmp_path, settings):
    run = make_run(tmp_path / "run", widths=(16, 32),
                   extra=["model.depth=2", "model.input_norm=window"])
    rng = np.random.default_rng(0)
    image = tmp_path / "photo.npy"
    np.save(image, rng.random((50, 70, 3), dtype=np.float32))
    on_tf = predict_on("tensorflow", run, image, tmp_path / "tf.npy", *settings)
    on_jax = predict_on("jax", run, image, tmp_path / "jax.npy", *settings)
    assert on_tf.shape == (50, 70) and on_tf.std() > 1e-3  # a map that varies with the photo
    np.testing.assert_allclose(on_jax, on_tf, atol=1e-5)


def test_training_on_another_backend_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-m", "segmenter", "train", "--config",
                           "configs/default.yaml", "--out", str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "KERAS_BACKEND=jax: training runs on TensorFlow" in done.stderr
    assert not (tmp_path / "run").exists()
