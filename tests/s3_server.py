"""A real S3-API server on loopback for the ``s3://`` results tests: moto's standalone server.

Started on a free port as a child process and stopped by its process id. ``uri(bucket, prefix)``
is a ``storage_uri`` that pyarrow.fs opens from any process with no environment: the
endpoint, scheme and region ride in the query, the (dummy) keys in the user part, so Ray
workers started before the test need nothing set.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from tests.redis_server import free_port

ACCESS_KEY = "rescoredtest"
SECRET_KEY = "rescoredtestsecret"
REGION = "us-east-1"


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> S3Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/moto-api/", timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)

    def query(self) -> str:
        return f"endpoint_override={self.endpoint}&scheme=http&region={REGION}"

    def uri(self, bucket: str, prefix: str = "") -> str:
        """``s3://KEY:SECRET@bucket/prefix?endpoint_override=...``; creates the bucket."""
        self.filesystem().create_dir(bucket)
        return f"s3://{ACCESS_KEY}:{SECRET_KEY}@{bucket}/{prefix.strip('/')}?{self.query()}"

    def filesystem(self):
        """pyarrow's S3 filesystem on this server (to look at what the service wrote)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            endpoint_override=self.endpoint,
            scheme="http",
            region=REGION,
            allow_bucket_creation=True,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
