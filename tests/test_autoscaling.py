"""The documented cluster flow on an autoscaling cluster: after `ray up` only the head is up and it cannot hold a
trial; `ray job submit` of the chain must wait for the autoscaler instead of failing, the autoscaler must launch
worker nodes, and a worker node lost mid-trial must be replaced with the trial resuming from its checkpoint.

Ray's fake multi-node provider plays the cloud (tests/autoscaling_cluster.py). These tests start their own Ray
cluster, so they carry the ``isolated`` marker and run in a pytest session of their own (Makefile), never beside
the session cluster of the other cluster tests: two Ray clusters on one machine break Train's placement-group
cleaner (docs/notes/ray.md).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
from autoscaling_cluster import WORKER_TYPE, AutoscalingCluster
from helpers import constant_predictor_miou
from local_cluster import kill_pids

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.isolated, pytest.mark.slow]
ON_WORKERS = ("scaling.custom_resources={worker_slot: 1}", "retrain.custom_resources={worker_slot: 1}")
"""Every Train worker asks for a resource only the launched nodes offer: none can run on the head."""


@pytest.fixture(scope="module")
def autoscaling():
    cluster = AutoscalingCluster(head_cpus=1, worker_cpus=2, max_workers=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def search_command(storage: Path, name: str, *args: str) -> str:
    """The job's entrypoint (a shell command line: every argument quoted)."""
    options, overrides = [a for a in args if a.startswith("--")], [a for a in args if not a.startswith("--")]
    argv = ["python", "experiments/search.py", "--config", "experiments/configs/smoke.yaml", "--storage-path",
            str(storage), "--name", name, *options, "runtime.progress_seconds=0", *ON_WORKERS, *overrides]
    return f"cd {shlex.quote(str(ROOT))} && {shlex.join(argv)}"


def test_the_first_job_on_a_head_only_cluster_waits_for_the_autoscaler_and_finishes(autoscaling, tmp_path):
    assert not autoscaling.worker_raylets()  # only the head: 1 CPU, and no worker_slot at all
    proc = autoscaling.submit(search_command(tmp_path, "first"), timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "the nodes up now hold 0 at once" in out  # said before the trials waited
    launched = [line for line in autoscaling.monitor_log().splitlines() if "Adding" in line and WORKER_TYPE in line]
    assert launched and autoscaling.launches() >= 2, autoscaling.monitor_log()[-3000:]
    summary = json.loads((tmp_path / "first" / "final" / "summary.json").read_text())
    assert summary["retrain"]["test_miou"] > constant_predictor_miou(summary["config"], "report")
    print("\n".join(launched[:5]))


def train_worker_raylet(cluster: AutoscalingCluster) -> int | None:
    from local_cluster import _processes

    procs = _processes()
    for pid, (_, cmd) in procs.items():
        if not cmd.startswith("ray::RayTrainWorker"):
            continue
        parent = procs[pid][0]
        while parent in procs:
            if parent in cluster.worker_raylets():
                return parent
            parent = procs[parent][0]
    return None


def test_a_worker_node_lost_mid_trial_is_replaced_and_the_trial_resumes(autoscaling, tmp_path):
    """One search of 12 epochs; once its second epoch is recorded (the first epoch's checkpoint is then registered
    with Ray Train, not only written), the node hosting a Train worker is killed."""
    import subprocess

    from local_cluster import BIN

    autoscaling.wait_idle_nodes_gone()  # the first test's nodes: a replacement must be launched, not found idle
    command = search_command(tmp_path, "fault", "--no-tune", "search.epochs=12", "runtime.max_failures=3")
    log = tmp_path / "job.log"
    job = subprocess.Popen([str(BIN / "ray"), "job", "submit", "--address", autoscaling.dashboard_url, "--", "bash",
                            "-c", command], env=autoscaling.env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                           text=True)  # a file, not a pipe: the loops below do not read while the job prints
    deadline, killed = time.time() + 900, None
    while time.time() < deadline and killed is None and job.poll() is None:
        if (tmp_path / "fault" / "epochs" / "epoch-0002.json").exists():  # epoch 1's checkpoint is registered by now
            killed = train_worker_raylet(autoscaling)
        time.sleep(0.5)
    if killed is None:
        job.kill()
        job.wait(timeout=60)
        out = log.read_text(errors="replace")
        raylets = {pid: cmd for pid, (_, cmd) in __import__("local_cluster")._processes().items() if "raylet" in cmd}
        pytest.fail(f"no checkpoint, or no Train worker on a launched node, before the run ended: {out[-3000:]} "
                    f"checkpoints {sorted(p.name for p in (tmp_path / 'fault').glob('checkpoint_*'))} "
                    f"workers' raylets {autoscaling.worker_raylets()} raylets {list(raylets.items())[:4]}")
    before = autoscaling.worker_raylets()  # the nodes up at the kill: the killed one, the trial's other, any spare
    kill_pids({killed})
    epochs_before = len(list((tmp_path / "fault" / "epochs").glob("epoch-*.json")))
    assert epochs_before < 12, "the kill landed after the last epoch"  # a checked moment, not a race
    started = set()  # raylets of nodes that came up after the kill (a launch counted by process, not by log line)
    deadline = time.time() + 1500
    while job.poll() is None and time.time() < deadline:
        started |= autoscaling.worker_raylets() - before
        time.sleep(1)
    job.wait(timeout=60)
    out = log.read_text(errors="replace")
    assert job.returncode == 0, out[-4000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "fault" / "epochs").glob("epoch-*.json"))]
    assert [r["epoch"] for r in records] == list(range(1, 13))
    assert records[-1]["resumed_from_epoch"] >= 1, (epochs_before, out[-3000:])
    assert killed not in autoscaling.worker_raylets()
    # The trial holds 2 nodes (2 workers, one worker_slot each). With no spare up at the kill, it could only resume
    # on a node launched after it; with a spare, the spare is the replacement.
    spare = len(before) > 2
    assert started or spare, (sorted(before), autoscaling.monitor_log()[-3000:])
