"""tf.distribute: strategy choice, MirroredStrategy on 2 logical CPUs, 2 local workers.

The multi-worker test starts two real worker processes that talk over loopback (gRPC) under
MultiWorkerMirroredStrategy; it takes about half a minute. Run only it with
``python -m pytest tests/training/test_training_distribute.py -k multiworker``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_SETTINGS, tiny_dataset, tiny_yaml

from segmenter.config import load_config
from segmenter.errors import ConfigError
from segmenter.runs import open_run
from segmenter.training import train
from segmenter.training.distribute import is_chief, select_strategy, tf_config_workers

HERE = Path(__file__).resolve().parent


def test_strategy_choice(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == 0
    default = select_strategy(load_config(None).train)
    assert default.num_replicas_in_sync == 1 and is_chief(default)
    with pytest.raises(ConfigError, match="multiworker needs the cluster in the TF_CONFIG"):
        select_strategy(load_config(None, ["train.strategy=multiworker"]).train)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}}))
    assert tf_config_workers() == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        tf_config_workers()


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, caplog):
    cfg = load_config(None, [*TINY_SETTINGS, "train.strategy=mirrored"])
    with caplog.at_level(logging.INFO, logger="segmenter"):
        results = train(cfg, tmp_path, dataset=tiny_dataset())
    assert "MirroredStrategy with 2 replica(s)" in caplog.text
    assert results[0].status == "finished"
    assert open_run(tmp_path).finished_widths() == [16]
    # The same training under the default strategy: same global batch, same patches.
    mirrored = open_run(tmp_path).read_history(16)
    single = train(load_config(None, TINY_SETTINGS), tmp_path / "single",
                   dataset=tiny_dataset())
    assert results[0].final_loss == pytest.approx(single[0].final_loss, rel=0.1)
    default = open_run(tmp_path / "single").read_history(16)
    assert [r["step"] for r in mirrored] == [r["step"] for r in default]


@pytest.mark.parametrize("loss,tolerance", [("mse", 0.05), ("dice", 0.05)])
def test_mirrored_losses_follow_the_default_strategy(tmp_path, loss, tolerance):
    """Loss histories under MirroredStrategy (2 replicas) and the default strategy.

    Not equal to 1e-3: Keras' BatchNormalization normalises each replica's half of the batch
    with that half's statistics (not synchronised), which moves the losses by up to ~3 %
    (with ``synchronized=True`` BatchNorm the MSE histories agree to 1e-5); Dice is pooled per
    replica's half batch, then averaged. Dice was counted once per replica before (its scalar
    escaped Keras' 1 / replicas loss scaling): twice the default strategy's loss.
    """
    histories = []
    for strategy in ("mirrored", "default"):
        cfg = load_config(None, [*TINY_SETTINGS, f"train.strategy={strategy}",
                                 f"train.loss={loss}"])
        train(cfg, tmp_path / strategy, dataset=tiny_dataset())
        histories.append(open_run(tmp_path / strategy).read_history(16))
    mirrored, default = histories
    for key in ("loss", "val_loss"):
        assert [r[key] for r in mirrored] == pytest.approx([r[key] for r in default],
                                                           rel=tolerance), key


def test_ema_under_mirrored_strategy_leaves_training_alone(tmp_path):
    """train.ema on two replicas: the mirrored weights are swapped for their average to
    validate and back (7 steps in two fit calls), so the training losses are those of the
    same run without it, and the saved model is the average."""
    runs = {}
    for ema in (0.0, 0.5):
        cfg = load_config(None, [*TINY_SETTINGS, "train.strategy=mirrored", "train.steps=7",
                                 "train.learning_rate=0.01", f"train.ema={ema}"])
        results = train(cfg, tmp_path / str(ema), dataset=tiny_dataset())
        assert results[0].status == "finished"
        runs[ema] = open_run(tmp_path / str(ema))
    plain, averaged = runs[0.0].read_history(16), runs[0.5].read_history(16)
    assert [r["step"] for r in averaged] == [3.0, 6.0, 7.0]
    assert [r["loss"] for r in averaged] == pytest.approx([r["loss"] for r in plain], rel=1e-4)
    pairs = zip(runs[0.0].load_model(16).trainable_weights,
                runs[0.5].load_model(16).trainable_weights, strict=True)
    assert any(not np.allclose(a.numpy(), b.numpy(), atol=1e-6) for a, b in pairs)


def test_keras_private_api_missing_is_a_clear_error(monkeypatch):
    import keras
    from keras.src.backend.tensorflow import trainer as tf_trainer

    from segmenter.errors import SegmenterError
    from segmenter.training import distribute

    monkeypatch.delattr(tf_trainer, "reduce_per_replica")
    with pytest.raises(SegmenterError, match=rf"Keras {keras.__version__} lacks "
                                             r"reduce_per_replica .*keras==3\.15"):
        distribute._patch_keras_multiworker_reduce()

    class MultiWorkerMirroredStrategy:  # only the class name matters here
        pass

    with pytest.raises(SegmenterError, match="lacks _maybe_symbolic_build, _symbolic_build"):
        distribute.avoid_multiworker_build_reduce(object(), MultiWorkerMirroredStrategy(), 16, 4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_multiworker_two_local_processes(tmp_path):
    from segmenter.data.sample import ensure_sample

    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_yaml(steps=6, every=3))
    ensure_sample(load_config(config).data)  # generated once, before the workers start
    out = tmp_path / "run"
    ports = [str(_free_port()), str(_free_port())]
    # The workers import the segmenter this test imported (not another install of it).
    import segmenter

    code = str(Path(segmenter.__file__).resolve().parent.parent)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(HERE), code])}
    workers = [
        subprocess.Popen([sys.executable, str(HERE / "mw_worker.py"), str(i), *ports,
                          str(config), str(out)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    assert "CollectiveAllReduceStrategy with 2 replica(s)" in outputs[0][1]  # multi-worker
    run = open_run(out)
    assert run.finished_widths() == [16]
    assert [row["step"] for row in run.read_history(16)] == [3.0, 6.0]
