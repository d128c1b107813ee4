"""Shared fixtures: a CLI runner, an isolated cache, the real photo, and two logical CPUs.

The CPU is split into two logical devices before the backend starts, so distribution code
(TensorFlow's MirroredStrategy, JAX's DataParallel) is exercised on a machine without GPUs.
Under ``KERAS_BACKEND=jax`` TensorFlow is not imported here: the ``backend``-marked tests run
a second time on JAX (the README's test command).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("SEGMENTER_REAL_DIR", REPO.parent / "shared" / "real"))


def pytest_configure(config: pytest.Config) -> None:
    from segmenter.tfenv import keras_backend, native_stderr_captured

    if keras_backend() == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
        return
    if keras_backend() != "tensorflow":
        return

    with native_stderr_captured():  # TensorFlow's C++ start-up lines are noise here
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
            )
        except RuntimeError:  # TensorFlow already initialised (e.g. a plugin imported it)
            pass


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Never touch the user's ~/.cache: every test session gets its own cache folder."""
    cache = tmp_path_factory.getbasetemp() / "segmenter-cache"
    monkeypatch.setenv("SEGMENTER_CACHE", str(cache))
    # No real AWS credentials or config may leak into the tests.
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture
def runner():
    """Invoke the real `segmenter` click group in-process."""
    from click.testing import CliRunner

    from segmenter.cli.main import cli

    class _Runner:
        def __init__(self) -> None:
            self.runner = CliRunner()

        def __call__(self, *args: str, **kwargs):
            return self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return _Runner()


@pytest.fixture
def real_dir() -> Path:
    """The real photo with a person-drawn label (../shared/real); skipped where absent."""
    if not (REAL_DIR / "train").is_dir():
        pytest.skip(f"real sample not found at {REAL_DIR}")
    return REAL_DIR


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One LocalCluster of 2 worker processes (one thread each, loopback only) for the whole
    session; tests reach it with ``--scheduler tcp://127.0.0.1:PORT``, as a real cluster.
    Workers import TensorFlow on their first task, so the first test using it pays for that."""
    pytest.importorskip("distributed")
    from segmenter.predict.cluster import WORKER_ENV, start_local_cluster

    cache = tmp_path_factory.mktemp("worker-cache")
    env = {**WORKER_ENV, "SEGMENTER_CACHE": str(cache)}
    local = start_local_cluster(2, env=env, dashboard_address=":0")
    yield local
    local.close()


@pytest.fixture(scope="session")
def scheduler(cluster) -> str:
    return cluster.scheduler_address


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server with a bucket ``masks`` anyone may read and write (as a lab's scratch
    bucket). Anonymous access, as the other S3 tests: the bucket policy grants it, nothing is
    patched."""
    import json

    from helpers import start_s3_server

    server = start_s3_server()
    client = server.client()
    client.create_bucket(Bucket="masks")
    # S3 allows HEAD with s3:GetObject; moto's server asks for an s3:HeadObject of its own.
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
               "s3:HeadObject"]
    policy = {"Version": "2012-10-17", "Statement": [{
        "Sid": "PublicReadWrite", "Effect": "Allow", "Principal": "*", "Action": actions,
        "Resource": ["arn:aws:s3:::masks", "arn:aws:s3:::masks/*"]}]}
    client.put_bucket_policy(Bucket="masks", Policy=json.dumps(policy))
    yield server
    server.stop()
