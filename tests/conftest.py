"""Shared fixtures: one Ray cluster for the whole test session, and a tiny search config.

Ray start-up costs 6-11 s per node and a TorchTrainer ~20 s more (docs/notes/ray.md), so every test that needs Ray
shares `ray_cluster` (a real three-node cluster) and `ray_session` (this process connected to it). Token auth is
disabled before Ray is imported, so the tests write nothing to ``~/.ray``.

A test that uses one of the Ray fixtures is marked ``cluster`` automatically. The fast run (``make test-fast``,
``-m "not slow and not cluster"``) sets ``ADL_TESTS_NO_RAY=1``: Ray's temporary folder then points into a folder
of this session, for this process and every process it starts, and the run fails at its end if any Ray was
started there (a test that needs Ray without being marked so; `ray_sessions`, tested in tests/test_no_ray_guard.py).
"""

from __future__ import annotations

import copy
import os
import uuid
from types import SimpleNamespace

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

pytest_plugins = ["pytester"]  # for tests/test_no_ray_guard.py; pytest allows this in a top-level conftest only

NO_RAY = os.environ.get("ADL_TESTS_NO_RAY") == "1"
RAY_FIXTURES = {"ray_cluster", "ray_session", "smoke_experiment", "straight_search"}

if NO_RAY:
    import tempfile

    _NO_RAY_DIR = tempfile.mkdtemp(prefix="adl-no-ray-")
    os.environ["RAY_TMPDIR"] = _NO_RAY_DIR  # inherited by every CLI a test starts


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def ray_sessions(ray_tmpdir: str | os.PathLike) -> list[str]:
    """The Ray session folders under ``ray_tmpdir`` (a ``RAY_TMPDIR``), relative to it; [] when Ray never started.

    Ray starts each instance in ``$RAY_TMPDIR/ray/session_<date>_<pid>`` (``ray._common.utils.
    get_default_ray_temp_dir`` appends ``ray``; ``Node`` joins the session name onto that). ``session_*`` right in
    ``ray_tmpdir`` counts too: that is where one lands when ``--temp-dir`` is pointed at the folder itself.
    """
    from pathlib import Path

    root = Path(ray_tmpdir)
    found = [p for pattern in ("session_*", "ray/session_*") for p in root.glob(pattern)]
    return sorted(p.relative_to(root).as_posix() for p in found)


def pytest_sessionfinish(session, exitstatus):
    """In the no-Ray run: fail when anything started a Ray (its session folder appears in our RAY_TMPDIR)."""
    if not NO_RAY:
        return
    import shutil

    started = ray_sessions(_NO_RAY_DIR)
    shutil.rmtree(_NO_RAY_DIR, ignore_errors=True)
    if started:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nERROR: the no-Ray test run started Ray ({', '.join(started)}): mark the test that needs Ray "
              "with @pytest.mark.cluster (or use a Ray fixture)")

from orchestrator.config import ExperimentConfig, config_from_dict  # noqa: E402
from orchestrator.io import storage  # noqa: E402

TINY = {
    "search_space": {"layers": 3, "blocks": 2, "filter_multiplier": 2, "stem_channels": [8, 8, 16]},
    "data": {"dataset": "synthetic", "crop_size": 32, "batch_size": 2, "val_batch_size": 4,
             "options": {"size": 16}, "val_options": {"size": 8}, "report_options": {"size": 8}},
    "search": {"epochs": 3, "warmup_epochs": 1},
    "scaling": {"num_workers": 2, "cpus_per_worker": 1},
    "runtime": {"max_failures": 0, "keep_checkpoints": 2},
}
"""A supernet of a few hundred kB on 32 px synthetic images: 2 steps per epoch on 2 workers, seconds each."""


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster for the whole session, stopped by process id at the end: a head with no CPUs (it runs
    GCS, dashboard and job drivers, as on a real cluster) and two worker nodes of 2 logical CPUs each, so a
    test can lose a worker node without losing the cluster. One Ray instance per session: with two on one
    machine, Ray's state API (used by Train's placement-group cleaner) refuses to pick one."""
    from local_cluster import LocalCluster

    cluster = LocalCluster(workers=2, head_cpus=0, cpus=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
    left = cluster.pids()
    assert not left, f"processes of the test cluster in {cluster.root} outlived its stop: {sorted(left)}"


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    """This test process connected to the session's cluster as a Ray driver."""
    import ray

    os.environ["RAY_ADDRESS"] = ray_cluster.gcs_address  # CLIs run in-process join it too
    ray.init(address=ray_cluster.gcs_address, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def smoke_experiment(ray_cluster, tmp_path_factory):
    """The smoke chain (sweep -> decode -> retrain) submitted to the session cluster with ``ray job submit``, as
    a user would; returns (the finished ``ray job submit`` process, the experiment folder). Shared by the
    end-to-end and analysis tests so the chain runs once per session."""
    import subprocess
    from pathlib import Path

    from local_cluster import BIN

    root = Path(__file__).resolve().parents[1]
    storage = tmp_path_factory.mktemp("e2e") / "results"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(root),
           "--", "python", "experiments/search.py", "--config", "experiments/configs/smoke.yaml",
           "--storage-path", str(storage), "--name", "smoke-e2e"]
    proc = subprocess.run(cmd, env=ray_cluster.env, capture_output=True, text=True, timeout=1200, cwd=root)
    return proc, storage / "smoke-e2e"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while a module's tests run (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    busy 2-core machine two threads spin-wait each other and a tiny forward/backward takes 16 s instead of 0.3 s
    (the Train workers use scaling.cpus_per_worker = 1); tiny tensors gain nothing from threads anyway."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """The tiny search as a plain config dict (a fresh copy; module-scoped fixtures can use it too)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_config(tiny_settings, tmp_path) -> ExperimentConfig:
    """The tiny search (3 epochs, warmup 1, 2 CPU workers) storing its runs under this test's tmp_path."""
    return config_from_dict({**tiny_settings, "storage_path": str(tmp_path / "results")}, source="tiny_config")


FOUR_EPOCHS = ["search.epochs=4", "search.warmup_epochs=1"]
"""The tiny search stretched to 4 epochs (warmup 1): what the resume and fault tests compare against."""


@pytest.fixture(scope="session")
def straight_search(ray_session, tiny_settings, tmp_path_factory):
    """The tiny 4-epoch search run once, uninterrupted (``run_single_search``); returns its run folder. Shared by
    the resume test and the fault tests, whose interrupted runs must end with the same alpha, beta and weights."""
    from orchestrator.config import with_overrides
    from orchestrator.train.trainers import run_single_search

    storage = tmp_path_factory.mktemp("straight")
    cfg = with_overrides(config_from_dict(tiny_settings), FOUR_EPOCHS)
    assert run_single_search(cfg, str(storage), "straight").metrics["epoch"] == 4
    return storage / "straight"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1 for the whole session, with bucket ``adl-test``; stopped by
    pid at the end. It starts in about 2 s and needs no Ray (tests/s3_server.py)."""
    from s3_server import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["query", "env"])
def s3_prefix(request, s3_server, monkeypatch, tmp_path):
    """A fresh prefix on the session's S3 server, as ``uri``: the endpoint in the URI's query ("query", with no
    ``AWS_ENDPOINT_URL``) or a plain ``s3://`` URI with ``AWS_ENDPOINT_URL`` set ("env"). The test runs in the
    empty ``tmp_path``, which must still be empty afterwards: nothing local is made from a URI."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    if request.param == "query":
        monkeypatch.delenv("AWS_ENDPOINT_URL")
    storage.forget_filesystems()
    monkeypatch.chdir(tmp_path)
    prefix = f"runs/{uuid.uuid4().hex[:12]}"
    uri = s3_server.uri(prefix) if request.param == "query" else s3_server.plain_uri(prefix)
    yield SimpleNamespace(uri=uri, prefix=prefix, server=s3_server, form=request.param)
    storage.forget_filesystems()
    assert list(tmp_path.iterdir()) == [], "a URI made something local"
