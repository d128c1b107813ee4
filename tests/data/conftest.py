"""Fixtures for the data tests: small generated Ontario-layout folders and a real S3 server.

The S3 server is moto's ``ThreadedMotoServer`` on a free loopback port: a real HTTP server
speaking the S3 protocol, so the code under test (s3fs, botocore, fsspec's cache) runs exactly
as it does against AWS. Nothing is patched or mocked. boto3 with dummy credentials only
*seeds* the buckets; the tests then read anonymously, like users of the public Ontario bucket.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    PRIVATE_BUCKET,
    PUBLIC_BUCKET,
    PUBLIC_PREFIX,
    S3Server,
    make_public_bucket,
    start_s3_server,
)


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small generated scenes (3 train, 1 test) in the Ontario layout. Do not modify."""
    from segmenter.data.sample import write_sample

    folder = tmp_path_factory.mktemp("scenes")
    write_sample(folder, n=4, size=96, seed=0)
    return folder


@pytest.fixture
def scenes_copy(scenes_dir: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`scenes_dir` that a test may break."""
    target = tmp_path / "data"
    shutil.copytree(scenes_dir, target)
    return target


@pytest.fixture(scope="session")
def s3(scenes_dir: Path) -> Iterator[S3Server]:
    """A session-wide S3 server: a public ``cdi-workshop`` bucket and a private one."""
    server = start_s3_server()
    make_public_bucket(server, PUBLIC_BUCKET, scenes_dir, PUBLIC_PREFIX)
    server.client().create_bucket(Bucket=PRIVATE_BUCKET)
    server.upload_folder(scenes_dir, PRIVATE_BUCKET, "ontario")
    yield server
    server.stop()
