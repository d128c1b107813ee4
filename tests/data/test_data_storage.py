"""Storage: local folders and S3 (a real moto server on loopback), the cache, S3 failures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import (
    PRIVATE_BUCKET,
    PUBLIC_BUCKET,
    PUBLIC_PREFIX,
    data_cfg,
    free_port,
    make_public_bucket,
    start_s3_server,
)

from segmenter.data.ontario import load_dataset
from segmenter.data.storage import expand_inputs, open_storage
from segmenter.errors import DataError

ONTARIO_URL = f"s3://{PUBLIC_BUCKET}/{PUBLIC_PREFIX}"


def test_public_bucket_loads_anonymously(s3, tmp_path: Path) -> None:
    cfg = data_cfg(source=ONTARIO_URL, endpoint_url=s3.endpoint, cache_dir=str(tmp_path))
    assert cfg.anon  # the default: public buckets need no credentials
    dataset = load_dataset(cfg, progress=False)
    assert [item.stem for item in dataset.train] == ["scene_000", "scene_001", "scene_002"]
    assert [item.stem for item in dataset.test] == ["scene_003"]
    assert dataset.split == "folders"
    assert dataset.train[0].source == f"{ONTARIO_URL}/train/scene_000.JPG"
    assert dataset.train[0].image.dtype == np.float32
    assert ONTARIO_URL in dataset.summary()


def test_s3_and_local_copies_load_identically(s3, scenes_dir: Path, tmp_path: Path) -> None:
    remote = load_dataset(
        data_cfg(source=ONTARIO_URL, endpoint_url=s3.endpoint, cache_dir=str(tmp_path)),
        progress=False,
    )
    local = load_dataset(data_cfg(source=str(scenes_dir)), progress=False)
    assert remote.fingerprint == local.fingerprint
    for a, b in zip(remote.train + remote.test, local.train + local.test, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.land, b.land)


def test_second_load_makes_no_requests(scenes_dir: Path, tmp_path: Path) -> None:
    """After one load, files and listings come from the cache: it works with the server gone."""
    server = start_s3_server()
    try:
        make_public_bucket(server, PUBLIC_BUCKET, scenes_dir, PUBLIC_PREFIX)
        cfg = data_cfg(source=ONTARIO_URL, endpoint_url=server.endpoint, cache_dir=str(tmp_path))
        first = load_dataset(cfg, progress=False)
    finally:
        server.stop()
    cached_files = list((tmp_path / "remote").rglob("files/*"))
    assert len(cached_files) >= 8  # 4 photos + 4 labels (+ fsspec's metadata file)

    started = time.monotonic()
    second = load_dataset(cfg, progress=False)  # any request would now fail: nobody listens
    assert time.monotonic() - started < 5
    assert second.fingerprint == first.fingerprint
    np.testing.assert_array_equal(second.train[0].image, first.train[0].image)

    with pytest.raises(DataError, match="cannot reach the S3 endpoint"):
        load_dataset(cfg, progress=False, refresh=True)  # a refresh does list again


def test_truncated_cache_file_is_downloaded_again(s3, tmp_path: Path) -> None:
    cfg = data_cfg(source=ONTARIO_URL, endpoint_url=s3.endpoint, cache_dir=str(tmp_path))
    first = load_dataset(cfg, progress=False)
    for path in (tmp_path / "remote").rglob("files/*"):
        if path.name != "cache":  # photos and labels, not fsspec's metadata file
            path.write_bytes(path.read_bytes()[:100])  # as if a first run had been killed
    again = load_dataset(cfg, progress=False)
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.test[0].image, first.test[0].image)


def test_missing_bucket(s3, tmp_path: Path) -> None:
    cfg = data_cfg(source="s3://no-such-bucket/ontario", endpoint_url=s3.endpoint)
    with pytest.raises(DataError, match=r"^s3://no-such-bucket/ontario/train: bucket "):
        load_dataset(cfg, progress=False)


def test_private_bucket_read_anonymously_is_denied(s3) -> None:
    cfg = data_cfg(source=f"s3://{PRIVATE_BUCKET}/ontario", endpoint_url=s3.endpoint)
    with pytest.raises(DataError) as info:
        load_dataset(cfg, progress=False)
    message = str(info.value)
    assert message.startswith(f"s3://{PRIVATE_BUCKET}/ontario/")
    assert "access denied" in message and "anon" in message
    assert "\n" not in message


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = data_cfg(source=ONTARIO_URL, endpoint_url=endpoint, cache_dir=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(DataError, match=f"cannot reach the S3 endpoint {endpoint}"):
        load_dataset(cfg, progress=False)
    assert time.monotonic() - started < 15


def test_cli_reports_s3_errors_in_one_line(runner, s3) -> None:
    result = runner(
        "data",
        "--set",
        "data.source=s3://no-such-bucket/x",
        "--set",
        f"data.endpoint_url={s3.endpoint}",
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert lines == [
        f"Error: s3://no-such-bucket/x/train: bucket 'no-such-bucket' not found on {s3.endpoint}"
    ]
    assert "Traceback" not in result.output


def test_cache_is_keyed_by_endpoint(s3, tmp_path: Path) -> None:
    """The same bucket name on another server is another bucket: no shared cache."""
    cfg = data_cfg(source=ONTARIO_URL, endpoint_url=s3.endpoint, cache_dir=str(tmp_path))
    load_dataset(cfg, progress=False)
    other = data_cfg(
        source=ONTARIO_URL,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        cache_dir=str(tmp_path),
    )
    with pytest.raises(DataError, match="cannot reach"):
        load_dataset(other, progress=False)


# --------------------------------------------------------------------------------------------
# Storage interface and predict inputs


def test_storage_interface_local(scenes_dir: Path) -> None:
    storage = open_storage(str(scenes_dir), data_cfg())
    assert storage.isdir("train") and not storage.isdir("nope")
    assert "train/scene_000.JPG" in storage.list("train")
    assert storage.list("nope") == []
    assert storage.read_bytes("train/scene_000.JPG")[:2] == b"\xff\xd8"
    with pytest.raises(DataError, match="scene_999.JPG: file not found"):
        storage.read_bytes("train/scene_999.JPG")


def test_missing_local_folder() -> None:
    with pytest.raises(DataError, match=r"^/no/such/folder: folder not found$"):
        open_storage("/no/such/folder", data_cfg())


def test_expand_inputs_mixes_files_folders_globs_and_urls(
    s3, scenes_dir: Path, tmp_path: Path
) -> None:
    cfg = data_cfg(endpoint_url=s3.endpoint, cache_dir=str(tmp_path))
    refs = expand_inputs(
        [
            str(scenes_dir / "test"),  # a folder
            str(scenes_dir / "train" / "scene_00[01].JPG"),  # a glob
            f"{ONTARIO_URL}/train/scene_002.JPG",  # one object
            f"{ONTARIO_URL}/*/scene_000.JPG",  # an S3 glob
        ],
        cfg,
    )
    assert [ref.name for ref in refs] == [
        "scene_003",
        "scene_000",
        "scene_001",
        "scene_002",
        "scene_000-2",  # same stem as a local photo: made unique, outputs never collide
    ]
    assert refs[3].path == f"{ONTARIO_URL}/train/scene_002.JPG"
    local = (scenes_dir / "train" / "scene_002.JPG").read_bytes()
    assert refs[3].read_bytes() == local


def test_expand_inputs_errors(s3, tmp_path: Path) -> None:
    cfg = data_cfg(endpoint_url=s3.endpoint)
    with pytest.raises(DataError, match="no/such.jpg: no such file or folder"):
        expand_inputs(["no/such.jpg"], cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no photos"):
        expand_inputs([str(empty)], cfg)
    with pytest.raises(DataError, match="no such file or folder in the bucket"):
        expand_inputs([f"s3://{PUBLIC_BUCKET}/nothing/here"], cfg)
