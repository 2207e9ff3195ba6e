"""Token authentication as cluster.yaml turns it on: a head started with RAY_AUTH_MODE=token and a token file
refuses the job API without the token and accepts `ray job submit` with it (docs/cluster.md, "Security").
Its own Ray head, so ``isolated`` (run in a pytest session of its own, see tests/test_autoscaling.py)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port
from local_cluster import BIN, cluster_env, kill_pids, pids_under

pytestmark = [pytest.mark.isolated, pytest.mark.slow]


@pytest.fixture(scope="module")
def token_head():
    root = Path(tempfile.mkdtemp(prefix="adl-tok-"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    port, dashboard = free_port(), free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {**cluster_env(), **auth}
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=1",
                        "--node-ip-address=127.0.0.1", f"--ray-client-server-port={free_port()}",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                        f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={root / 'ray'}",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120, cwd=root)
        yield f"http://127.0.0.1:{dashboard}", auth
    finally:
        kill_pids(pids_under(root))
        shutil.rmtree(root, ignore_errors=True)


def submit(url: str, env: dict[str, str], tries: int = 10) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", "submit", "--address", url, "--", "echo", "hello-from-the-job"]
    for _ in range(tries):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if "No available agent" not in proc.stdout + proc.stderr:
            return proc
        time.sleep(3)
    return proc


def test_the_job_api_refuses_a_request_without_the_token(token_head):
    url, _ = token_head
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/api/jobs/", timeout=30)
    assert err.value.code == 401
    refused = submit(url, cluster_env())  # RAY_AUTH_MODE=disabled, no token
    assert refused.returncode != 0 and "hello-from-the-job" not in refused.stdout


def test_ray_job_submit_with_the_token_runs_the_job(token_head):
    url, auth = token_head
    accepted = submit(url, {**cluster_env(), **auth})
    assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
    assert "hello-from-the-job" in accepted.stdout
