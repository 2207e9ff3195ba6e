"""An autoscaling Ray cluster on this machine: Ray's fake multi-node provider, which launches worker nodes as local
processes when demand appears, as a cloud provider launches machines (docs/notes/ray.md, "An autoscaling cluster
on this machine").

The head is started with ``ray start --head --autoscaling-config=<file>`` (provider ``fake_multinode``) from inside
the cluster's own temporary folder, with every address on 127.0.0.1. Launched nodes outlive the head and some Ray
processes rename themselves, so `stop` ends every process whose working folder is inside the cluster's folder or
whose command line names it, by pid: never ``ray stop``, which would end every Ray on the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from helpers import free_port
from local_cluster import BIN, _processes, cluster_env, kill_pids, pids_under

HEAD_TYPE, WORKER_TYPE = "ray.head.default", "ray.worker.cpu"


def fake_config(gcs_port: int, head_cpus: int, worker_cpus: int, max_workers: int) -> dict:
    """A full cluster config for the fake provider: a head of ``head_cpus`` and one worker type of 0..max, whose
    nodes also offer one ``worker_slot``, which the tests' Train workers ask for: they never run on the head, and
    each launched node holds one of them."""
    empty = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
             "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
             "rsync_filter")
    return {
        "cluster_name": "adl-autoscaling-test", "max_workers": max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": worker_cpus, "worker_slot": 1}, "node_config": {},
                          "min_workers": 0,
                          "max_workers": max_workers}},
        "head_node_type": HEAD_TYPE, "file_mounts": {}, "file_mounts_sync_continuously": False,
        **{key: [] for key in empty},
    }


class AutoscalingCluster:
    """``start()`` brings up only the head; the autoscaler adds worker nodes of ``worker_cpus`` when work needs
    them, up to ``max_workers``."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 2, max_workers: int = 2):
        self.root = Path(tempfile.mkdtemp(prefix="adl-as-"))
        self.port, self.dashboard_port = free_port(), free_port()
        self.config = self.root / "autoscaling.yaml"
        self.config.write_text(yaml.safe_dump(fake_config(self.port, head_cpus, worker_cpus, max_workers)))
        self.env = {**cluster_env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every address 127.0.0.1: head, fake nodes, jobs
                    "ADL_AUTOSCALING_CONFIG": str(self.config)}  # what the jobs' capacity checks read
        self.head_cpus = head_cpus

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> AutoscalingCluster:
        cmd = [str(BIN / "ray"), "start", "--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
               "--num-gpus=0", f"--autoscaling-config={self.config}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
               f"--temp-dir={self.root / 'ray'}", "--disable-usage-stats"]
        subprocess.run(cmd, env=self.env, cwd=self.root, check=True, capture_output=True, timeout=120)
        self.head_raylets = self.raylets()
        return self

    def worker_raylets(self) -> set[int]:
        """pids of the raylets of the nodes the autoscaler launched."""
        return self.raylets() - self.head_raylets

    def submit(self, entrypoint: str, timeout: float, tries: int = 10) -> subprocess.CompletedProcess:
        """``ray job submit`` (the job agent needs a few seconds after ``ray start``: retried)."""
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard_url, "--", "bash", "-c", entrypoint]
        for _ in range(tries):
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
            if "No available agent" not in proc.stdout + proc.stderr:
                return proc
            time.sleep(3)
        return proc

    def launches(self) -> int:
        """How many worker nodes the autoscaler has launched so far (its log's ``Adding`` lines)."""
        return sum(int(line.split("Adding ", 1)[1].split()[0]) for line in self.monitor_log().splitlines()
                   if "Adding " in line and WORKER_TYPE in line and line.split("Adding ", 1)[1].split()[0].isdigit())

    def wait_idle_nodes_gone(self, timeout: float = 180.0) -> None:
        """Wait until the autoscaler has terminated every idle launched node (``idle_timeout_minutes``)."""
        deadline = time.time() + timeout
        while self.worker_raylets() and time.time() < deadline:
            time.sleep(2)

    def monitor_log(self) -> str:
        logs = sorted((self.root / "ray").glob("session_*/logs/monitor*.log")) + \
            sorted((self.root / "ray").glob("session_*/logs/monitor*.out"))
        return "\n".join(p.read_text(errors="replace") for p in logs)

    def raylets(self) -> set[int]:
        """pids of every raylet of this cluster (the head's and the launched nodes')."""
        return {pid for pid, (_, cmd) in _processes().items() if "raylet/raylet" in cmd and str(self.root) in cmd}

    def pids(self) -> set[int]:
        """Every process of this cluster (``local_cluster.pids_under``)."""
        return pids_under(self.root)

    def stop(self) -> None:
        kill_pids(self.pids())
        shutil.rmtree(self.root, ignore_errors=True)
