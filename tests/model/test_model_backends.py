"""A model trained (saved) under TensorFlow predicts the same map under JAX.

Each backend runs in its own process (Keras picks its backend once, at import): the run's model
is loaded with ``safe_mode`` and a photo predicted through the whole photo path (windows, TTA
with grey passes, BatchNorm adaptation, the scale merge); the maps must agree to float rounding.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_run
from PIL import Image

from segmenter.runs import open_run

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


def without_tensorflow(*args: str, cwd: Path, devices: int = 2) -> subprocess.CompletedProcess:
    """``segmenter ARGS`` under JAX in a process where TensorFlow cannot be imported, the CPU
    split into ``devices`` JAX devices."""
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, str(HERE.parent / "without_tensorflow.py"), *args],
                          env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


HERE = Path(__file__).resolve().parent
TINY = ["data.sample.n=8", "data.sample.size=128", "train.widths={16: 8, 32: 4}",
        "train.steps=6", "train.validate_every=3", "train.validation_batches=1",
        "model.depth=2", "model.filters=4"]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_jax_trains_predicts_and_evaluates_without_tensorflow(tmp_path):
    """The issue's machine: JAX and no TensorFlow. Data-parallel over two CPU devices."""
    sets = [arg for value in TINY + ["train.strategy=mirrored", "train.tensorboard=true"]
            for arg in ("--set", value)]
    run = tmp_path / "run"
    done = without_tensorflow("train", "--out", str(run), *sets, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DataParallel with 2 replica(s) on CPU, Keras backend jax" in done.stderr
    assert "train.tensorboard: TensorFlow is not installed" in done.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["backend"] == "jax" and manifest["finished_widths"] == [16, 32]
    assert {w["backend"] for w in manifest["widths"].values()} == {"jax"}

    done = without_tensorflow("evaluate", "--run", str(run), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(done.stdout)
    assert scores["overall"]["images"] == 2 and 0.0 <= scores["overall"]["water_iou"] <= 1.0

    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(photo)
    done = without_tensorflow("predict", "--run", str(run), str(photo), "--out",
                              str(tmp_path / "masks"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "masks" / "photo_water_mask.png").is_file()

    # A batch that does not split evenly over the devices is refused in one line.
    done = without_tensorflow("train", "--out", str(tmp_path / "odd"), *sets, "--set",
                              "train.widths={16: 5}", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: train.widths.16: batch size 5 must be a multiple of the 2 devices that train it "
        "on JAX")
    assert not (tmp_path / "odd").exists()

    # A width started on JAX is not resumed on TensorFlow (--backend): one line, nothing changed.
    status_file = open_run(run).status_path(16)
    status = json.loads(status_file.read_text())
    status_file.write_text(json.dumps({**status, "status": "interrupted"}))
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, "-m", "segmenter", "--backend", "tensorflow", "train",
                           "--resume", "--out", str(run)], env={**env, "KERAS_BACKEND": "jax"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].endswith(
        "pw16 was started on the jax backend and this is tensorflow; resume it with "
        "KERAS_BACKEND=jax, or use another --out")
    assert json.loads(status_file.read_text())["status"] == "interrupted"


PATCHES = """
import sys
import numpy as np
from segmenter.config import AugmentConfig
from segmenter.training.pipeline import PatchSource, training_dataset

rng = np.random.default_rng(0)
class Item:
    def __init__(self, stem, h, w):
        self.stem, self.image = stem, rng.random((h, w, 3), dtype=np.float32)
        self.land = (rng.random((h, w)) > 0.5).astype(np.float32)
source = PatchSource.from_images([Item("a", 40, 56), Item("b", 48, 36)], row_channel=True)
augment = AugmentConfig(flip=True, rotate90=False, scale=0.3, tilt=10, gain=0.1, hue=10,
                        saturation=0.2, greyscale=0.2, gamma=0.2, blur=1.0, noise=0.05)
batches = training_dataset(source, 16, 8, seed=3, start_step=5, steps=8, augment=augment,
                           upright=True)
np.save(sys.argv[1], np.stack([np.concatenate([np.asarray(x), np.asarray(y)], -1)
                               for x, y in batches]))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_every_backend_cuts_and_augments_the_same_patches(tmp_path):
    """One pipeline: the draws are made on the host, the pixels in keras.ops on each backend."""
    found = {}
    for backend in ("tensorflow", "jax"):
        out = tmp_path / f"{backend}.npy"
        done = subprocess.run([sys.executable, "-c", PATCHES, str(out)],
                              env={**os.environ, "KERAS_BACKEND": backend},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        found[backend] = np.load(out)
    assert found["tensorflow"].shape == (3, 8, 16, 16, 5)
    assert found["tensorflow"][..., :3].std() > 0.05  # real, varied patches
    np.testing.assert_allclose(found["jax"], found["tensorflow"], atol=1e-5)


def test_the_backend_is_chosen_as_keras_chooses_and_never_a_missing_tensorflow(tmp_path,
                                                                            monkeypatch):
    from segmenter import tfenv

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert tfenv.keras_backend() == "torch"  # the environment first
    monkeypatch.delenv("KERAS_BACKEND")
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert tfenv.keras_backend() == "jax"  # then Keras' config file
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    assert tfenv.keras_backend() == "tensorflow"
    # Keras writes "tensorflow" there on first use; without TensorFlow, the installed one.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a))
    assert tfenv.keras_backend() == ("jax" if real_find_spec("jax") else "tensorflow")


def test_out_of_memory_is_recognised_on_every_backend():
    from segmenter.training.distribute import out_of_memory

    class XlaRuntimeError(RuntimeError):  # what jaxlib raises; matched by name
        pass

    assert out_of_memory(MemoryError())
    assert out_of_memory(XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4 GiB"))
    assert not out_of_memory(XlaRuntimeError("INVALID_ARGUMENT: shapes differ"))
    assert not out_of_memory(ValueError("RESOURCE_EXHAUSTED"))
    tf = pytest.importorskip("tensorflow")
    assert out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))
