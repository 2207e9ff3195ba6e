"""`adl retrain` run to the end, and the same command resumed after its driver was killed mid-run: the resumed run
continues from its newest checkpoint (the epochs before it are not trained again) and ends with the same number
of epochs and a report of both splits. On the session's Ray cluster."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, constant_predictor_miou
from local_cluster import cluster_env, kill_pids

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
GENOTYPE = {"cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]], [["dil_conv_3x3", 1], ["sep_conv_3x3", 2]]],
            "path": [0, 1, 1]}


def retrain_command(tmp_path: Path, tiny_settings: dict) -> list[str]:
    config, genotype = tmp_path / "tiny.yaml", tmp_path / "genotype.json"
    config.write_text(yaml.safe_dump({**tiny_settings, "retrain": {"epochs": 6, "crop_size": 32, "batch_size": 2,
                                                                   "filter_multiplier": 2, "num_workers": 2}}))
    genotype.write_text(json.dumps(GENOTYPE))
    return [sys.executable, "experiments/retrain.py", "--genotype", str(genotype), "--config", str(config),
            "--storage-path", str(tmp_path / "runs"), "--name", "r", "runtime.progress_seconds=0"]


def epochs_done(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "epochs").glob("epoch-*.json"))]


def test_a_retrain_killed_mid_run_resumes_from_its_checkpoint(ray_cluster, tiny_settings, tmp_path):
    cmd, run = retrain_command(tmp_path, tiny_settings), tmp_path / "runs" / "r"
    env = {**cluster_env(), "RAY_ADDRESS": ray_cluster.gcs_address}
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None and not (run / "checkpoint_epoch0002").is_dir():
        time.sleep(0.2)
    done_at_kill = len(epochs_done(run))
    kill_pids({first.pid})  # the driver: its Train controller dies with it
    first.wait(timeout=60)
    assert 2 <= done_at_kill < 6, f"the kill did not land mid-run ({done_at_kill} epochs done)"
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "epochs").glob("epoch-*.json")}
    resumed = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records = epochs_done(run)
    assert [r["epoch"] for r in records] == list(range(1, 7))
    assert (run / "epochs" / "epoch-0001.json").stat().st_mtime_ns == stamps["epoch-0001.json"]  # not trained again
    config = yaml.safe_load((tmp_path / "tiny.yaml").read_text())
    assert records[-1]["test_miou"] > constant_predictor_miou(config, "report")
    assert "test_miou=" in resumed.stdout and "val_miou=" in resumed.stdout


def test_a_finished_retrain_run_again_trains_nothing(ray_cluster, tiny_settings, tmp_path):
    cmd, run = retrain_command(tmp_path, tiny_settings), tmp_path / "runs" / "r"
    env = {**cluster_env(), "RAY_ADDRESS": ray_cluster.gcs_address}
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "epochs").glob("epoch-*.json")}
    assert len(stamps) == 6 and "test_miou=" in first.stdout
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "epochs").glob("epoch-*.json")} == stamps
