"""Helpers shared by the data tests (imported as a plain module: tests/data is on sys.path)."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from segmenter.config import DataConfig

PUBLIC_BUCKET = "cdi-workshop"
PUBLIC_PREFIX = "semseg_data/ontario"
PRIVATE_BUCKET = "private-lab-data"


def data_cfg(**values: object) -> DataConfig:
    """A validated ``data`` section with these keys set."""
    return DataConfig.model_validate(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto S3 server and a boto3 client (dummy credentials) to seed it."""

    endpoint: str
    server: object

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="seeding",
            aws_secret_access_key="seeding",
            region_name="us-east-1",
        )

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> None:
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder).as_posix()}"
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    def stop(self) -> None:
        self.server.stop()


def start_s3_server() -> S3Server:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log in test output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(endpoint=f"http://127.0.0.1:{port}", server=server)


def make_public_bucket(s3: S3Server, bucket: str, folder: Path, prefix: str) -> None:
    """A bucket anyone may list and read, as the real ``cdi-workshop`` bucket is."""
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    s3.upload_folder(folder, bucket, prefix)
