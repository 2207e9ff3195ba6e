"""A real S3-protocol server for the tests: moto's server mode (``python -m moto.server``) on 127.0.0.1 with a free
port, dummy credentials and one bucket, stopped by its process id (docs/notes/ray.md, "S3 without AWS").

pyarrow (and so Ray and `orchestrator.io.storage`) reaches it in two ways: the endpoint in the URI's query
(`S3Server.uri`: ``s3://bucket/prefix?endpoint_override=127.0.0.1:PORT&scheme=http``), or a plain
``s3://bucket/prefix`` with ``AWS_ENDPOINT_URL=http://127.0.0.1:PORT`` in the environment (`S3Server.env`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from helpers import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
"""Dummy credentials, a region (no region lookup) and no EC2 metadata probe (which would wait for a timeout)."""
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class S3Server:
    """``start()`` runs the server and creates the bucket; ``stop()`` ends the server by pid."""

    def __init__(self, bucket: str = "adl-test"):
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{self.endpoint}"}
        self.proc: subprocess.Popen | None = None
        self.log = ""  # the server's output, kept until stop() to explain a failed start

    def uri(self, prefix: str = "") -> str:
        """``s3://bucket/prefix`` with the endpoint in the query: works without ``AWS_ENDPOINT_URL``."""
        return f"s3://{self.bucket}/{prefix.strip('/')}?endpoint_override={self.endpoint}&scheme=http"

    def plain_uri(self, prefix: str = "") -> str:
        """``s3://bucket/prefix``: reaches this server only with `env` (``AWS_ENDPOINT_URL``) set."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def start(self, timeout: float = 30.0) -> S3Server:
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        fd, self.log = tempfile.mkstemp(prefix="moto-", suffix=".log")
        try:
            self.proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        finally:
            os.close(fd)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}; see {self.log}")
            try:
                NO_PROXY.open(f"http://{self.endpoint}/moto-api/", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if time.time() > deadline:
                    self.stop(keep_log=True)
                    raise RuntimeError(f"moto server not answering on {self.endpoint}; see {self.log}") from None
                time.sleep(0.1)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self):
        """A boto3 S3 client of this server (to look at the objects behind pyarrow's back)."""
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def stop(self, keep_log: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.log and os.path.exists(self.log) and not keep_log:
            os.unlink(self.log)
