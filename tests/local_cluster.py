"""A real multi-node Ray cluster on this machine, started with ``ray start`` and stopped by process id.

Each node gets its own temp dir (docs/notes/ray.md: a shared one lets one node's runtime-env cleanup delete the
other's job folder). Every process is found through its temp dir on its command line (plus descendants) and
ended by pid: ``ray stop`` would end every Ray on the machine, including ones this test did not start.
The head's client server names no temp dir and, once orphaned, descends from no node: it is found by the GCS
address on its command line (``pids_of_gcs``). Auth is disabled through the environment, so nothing is written to
``~/.ray``; the dashboard and job server listen on 127.0.0.1. Every node's dashboard agent gets a free port, and
the head's client server too: Ray's defaults (52365, 10001) are taken by whichever cluster on the machine started
first, and a head without its agent refuses every ``ray job submit`` ("No available agent to submit job").
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers import free_port

BIN = Path(sys.executable).parent


def cluster_env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}  # the dashboard's Train page, as cluster.yaml sets it
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process visible in /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry.name)] = (ppid, cmd)
    return out


def _with_descendants(found: set[int], procs: dict[int, tuple[int, str]]) -> set[int]:
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        grew = bool(children)
        found |= children
    return found


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def pids_of(marker: str) -> set[int]:
    """Processes whose command line mentions ``marker``, and all their descendants."""
    procs = _processes()
    return _with_descendants({pid for pid, (_, cmd) in procs.items() if marker in cmd and pid != os.getpid()}, procs)


def pids_under(root: Path) -> set[int]:
    """Every process of a cluster kept in ``root``: its folder on the command line or its working folder inside
    it (Ray's client server names neither), and all their descendants."""
    procs = _processes()
    return _with_descendants({pid for pid, (_, cmd) in procs.items() if pid != os.getpid() and
                              (str(root) in cmd or _cwd(pid).startswith(str(root)))}, procs)


def pids_of_gcs(port: int) -> set[int]:
    """Processes started with ``--address=<host>:<port>`` (a cluster's GCS port), and all their descendants."""
    pattern = re.compile(rf"--address=\S+:{port}(\s|$)")
    procs = _processes()
    return _with_descendants({pid for pid, (_, cmd) in procs.items() if pattern.search(cmd) and pid != os.getpid()},
                             procs)


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_pids(pids: set[int], timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + timeout
        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)


class LocalCluster:
    """``ray start --head`` plus ``workers`` more ``ray start`` nodes, each with ``cpus`` logical CPUs."""

    def __init__(self, workers: int = 1, head_cpus: int = 2, cpus: int = 2):
        self.root = Path(tempfile.mkdtemp(prefix="adl-"))  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = cluster_env()
        self.head_cpus, self.cpus, self.workers = head_cpus, cpus, workers
        self.node_dirs: list[Path] = []

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray(self, *args: str) -> None:
        # Every Ray process of this cluster inherits RAY_ADDRESS: with another Ray on the machine, Ray's state API
        # (used inside Train) otherwise finds several clusters and refuses to pick one.
        env = {**self.env, "RAY_ADDRESS": self.gcs_address}
        subprocess.run([str(BIN / "ray"), *args], env=env, check=True, capture_output=True, timeout=120)

    def start(self) -> LocalCluster:
        head = self.root / "head"
        self.node_dirs.append(head)
        self._ray("start", "--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                  f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                  f"--temp-dir={head}", "--disable-usage-stats")
        for i in range(self.workers):
            self.add_node(f"node{i}")
        return self

    def add_node(self, label: str) -> Path:
        directory = self.root / label
        self.node_dirs.append(directory)
        self._ray("start", f"--address={self.gcs_address}", f"--num-cpus={self.cpus}", "--num-gpus=0",
                  f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={directory}", "--disable-usage-stats")
        return directory

    def node_pids(self, label: str) -> set[int]:
        return pids_of(str(self.root / label))

    def pids(self) -> set[int]:
        """Every process of this cluster still running: its folder on the command line or as working folder, or
        its GCS port in an ``--address=`` argument (the head's client server), and their descendants."""
        return pids_under(self.root) | pids_of_gcs(self.port)

    def stop(self) -> None:
        """End every process this cluster started (by pid): workers first, then the head, then any left."""
        for directory in reversed(self.node_dirs):
            kill_pids(pids_of(str(directory)))
        kill_pids(self.pids())


def raylet_hosting(marker: str, root: Path) -> tuple[str, int] | None:
    """(node label, raylet pid) of the node whose raylet runs a process whose command line starts with ``marker``
    (e.g. ``ray::RayTrainWorker``); the raylet is found by walking up the process's parents, and the label is
    its temp dir's folder under ``root``. None if no such process runs."""
    procs = _processes()
    for pid, (_, cmd) in procs.items():
        if not cmd.startswith(marker):
            continue
        parent = procs.get(pid, (0, ""))[0]
        while parent in procs:
            pcmd = procs[parent][1]
            if "raylet/raylet" in pcmd and str(root) in pcmd:
                label = pcmd.split(str(root) + "/", 1)[1].split("/", 1)[0]
                return label, parent
            parent = procs[parent][0]
    return None
