"""Storage: local folders and S3 (a real moto server on loopback), the cache, S3 failures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
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
    with pytest.raises(DataError, match=r"^s3://no-such-bucket/ontario: bucket "):
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
        f"Error: s3://no-such-bucket/x: bucket 'no-such-bucket' not found on {s3.endpoint}"
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


def test_missing_remote_folder_is_not_cached(s3, scenes_dir: Path, tmp_path: Path) -> None:
    """A folder uploaded after a run that did not find it is seen without --refresh."""
    prefix = "later/ontario"
    cfg = data_cfg(
        source=f"s3://{PUBLIC_BUCKET}/{prefix}", endpoint_url=s3.endpoint, cache_dir=str(tmp_path)
    )
    with pytest.raises(DataError, match=rf"^s3://{PUBLIC_BUCKET}/{prefix}/train: folder not"):
        load_dataset(cfg, progress=False)
    s3.upload_folder(scenes_dir, PUBLIC_BUCKET, prefix)
    assert len(load_dataset(cfg, progress=False).train) == 3


def test_second_run_without_test_folder_stays_offline(scenes_dir: Path, tmp_path: Path) -> None:
    """No test/ (seeded split): the missing folder costs no request on the second run."""
    server = start_s3_server()
    try:
        make_public_bucket(server, PUBLIC_BUCKET, scenes_dir / "train", "only/train")
        cfg = data_cfg(
            source=f"s3://{PUBLIC_BUCKET}/only",
            endpoint_url=server.endpoint,
            cache_dir=str(tmp_path),
        )
        first = load_dataset(cfg, progress=False)
    finally:
        server.stop()
    assert first.split == "seeded"
    assert load_dataset(cfg, progress=False).fingerprint == first.fingerprint


def test_a_404_from_a_server_that_is_not_s3(tmp_path: Path) -> None:
    """A wrong endpoint_url answering plain 404s is not reported as a missing folder."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        cfg = data_cfg(source="s3://bucket/ontario", endpoint_url=endpoint, cache_dir=str(tmp_path))
        with pytest.raises(DataError) as info:
            load_dataset(cfg, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert message.startswith(f"s3://bucket/ontario: {endpoint} answered 404 Not Found")
    assert "is it an S3 endpoint" in message and "folder not found" not in message


def test_prefetch_on_a_warm_cache_reads_nothing(s3, tmp_path: Path, monkeypatch) -> None:
    """The cache's cat() reads cached files into memory: prefetch asks only for the others."""
    from fsspec.implementations.cached import WholeFileCacheFileSystem

    cfg = data_cfg(source=ONTARIO_URL, endpoint_url=s3.endpoint, cache_dir=str(tmp_path))
    load_dataset(cfg, progress=False)
    storage = open_storage(ONTARIO_URL, cfg)
    paths = storage.list("train")
    asked: list[list[str]] = []
    original = WholeFileCacheFileSystem.cat

    def recording_cat(self, path, *args, **kwargs):
        asked.append(list(path))
        return original(self, path, *args, **kwargs)

    # A class attribute: the cache's __getattribute__ ignores instance attributes.
    monkeypatch.setattr(WholeFileCacheFileSystem, "cat", recording_cat)
    storage.prefetch(paths)
    assert asked == []  # every file is cached: nothing fetched, nothing read
    storage.fs.pop_from_cache(f"{storage.root}/{paths[0]}")
    storage.prefetch(paths)
    assert asked == [[f"{storage.root}/{paths[0]}"]]  # the spy works: only the missing one


def test_expand_inputs_takes_existing_names_with_brackets_literally(
    s3, scenes_dir: Path, tmp_path: Path
) -> None:
    photo = (scenes_dir / "train" / "scene_000.JPG").read_bytes()
    (tmp_path / "a[1].JPG").write_bytes(photo)
    (tmp_path / "a1.JPG").write_bytes(photo)  # what the name matches as a glob pattern
    cfg = data_cfg(endpoint_url=s3.endpoint, cache_dir=str(tmp_path / "cache"))
    refs = expand_inputs([str(tmp_path / "a[1].JPG")], cfg)
    assert [(ref.name, ref.path) for ref in refs] == [("a[1]", str(tmp_path / "a[1].JPG"))]
    assert [ref.name for ref in expand_inputs([str(tmp_path / "a[12].JPG")], cfg)] == ["a1"]

    s3.client().put_object(Bucket=PUBLIC_BUCKET, Key="odd/b[1].JPG", Body=photo)
    s3.client().put_object(Bucket=PUBLIC_BUCKET, Key="odd/b1.JPG", Body=photo)
    refs = expand_inputs([f"s3://{PUBLIC_BUCKET}/odd/b[1].JPG"], cfg)
    assert [ref.name for ref in refs] == ["b[1]"] and refs[0].read_bytes() == photo


def test_object_missing_from_a_cached_listing_hints_at_refresh(s3, tmp_path: Path) -> None:
    cfg = data_cfg(endpoint_url=s3.endpoint, cache_dir=str(tmp_path))
    first = f"{ONTARIO_URL}/train/scene_000.JPG"
    assert len(expand_inputs([first], cfg)) == 1  # caches the listing of train/
    photo = s3.client().get_object(Bucket=PUBLIC_BUCKET, Key=f"{PUBLIC_PREFIX}/train/scene_000.JPG")
    key = f"{PUBLIC_PREFIX}/train/added_later.JPG"
    s3.client().put_object(Bucket=PUBLIC_BUCKET, Key=key, Body=photo["Body"].read())
    try:
        with pytest.raises(DataError, match=r"added_later\.JPG: no such file .*--refresh"):
            expand_inputs([f"{ONTARIO_URL}/train/added_later.JPG"], cfg)
    finally:
        s3.client().delete_object(Bucket=PUBLIC_BUCKET, Key=key)
