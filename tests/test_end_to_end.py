"""The product as users touch it: a multi-node Ray cluster started with ``ray start`` on this machine, the smoke
config submitted with ``ray job submit``, and what the experiment leaves on disk. Also: an impossible resource
request fails fast with a clear message instead of waiting forever.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import PNG, constant_predictor_miou
from local_cluster import cluster_env

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def smoke_job(smoke_experiment):
    return smoke_experiment


def test_job_succeeds_and_sweeps_with_asha(smoke_job):
    proc, exp = smoke_job
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    sweep = json.loads((exp / "sweep.json").read_text())
    assert sweep["status"] == "finished"
    assert sweep["scheduler"]["kind"] == "asha" and sweep["scheduler"]["time_attr"] == "epoch"
    assert json.loads(next(exp.glob("experiment_state-*.json")).read_text())["trial_data"]
    trials = sorted(p.name for p in exp.glob("train-*") if p.is_dir())
    assert len(trials) >= 2, trials
    records = pd.read_parquet(exp / "records.parquet")
    assert records["trial_id"].nunique() >= 2
    assert not records.duplicated(["trial_id", "epoch"]).any()


def test_final_genotype_builds_a_discrete_net(smoke_job):
    from search_space import DiscreteNet, Genotype

    _, exp = smoke_job
    genotype = Genotype.load(str(exp / "final" / "genotype.json"))
    cfg = yaml.safe_load(SMOKE.read_text())
    assert genotype.layers == cfg["search_space"]["layers"]
    import torch

    net = DiscreteNet(genotype, 4, filter_multiplier=2, stem_channels=(8, 8, 16), aspp_channels=8)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32, 32)
    for png in ("path.png", "cell.png"):
        assert (exp / "final" / png).read_bytes()[:8] == PNG


def test_summary_has_retrain_miou_and_tensorboard_logs_exist(smoke_job):
    _, exp = smoke_job
    summary = json.loads((exp / "final" / "summary.json").read_text())
    retrain = summary["retrain"]
    assert retrain["val_miou"] > constant_predictor_miou(summary["config"], "select")  # it learned something
    assert retrain["test_miou"] > constant_predictor_miou(summary["config"], "report")
    assert summary["splits"] == {"val": "synthetic val", "test": "synthetic test"}
    # the shipped selection path: the decoded genotype and a sampled one, short-retrained, the better one retrained
    selection = json.loads((exp / "final" / "selection.json").read_text())
    choice = json.loads((exp / "final" / "choice.json").read_text())
    assert len(selection["candidates"]) == 2 and choice["decoded"] == selection["candidates"][0]["genotype"]
    winner = next(c for c in selection["candidates"] if c["label"] == selection["winner"])
    assert winner["val_miou"] == max(c["val_miou"] for c in selection["candidates"])
    assert summary["genotype"] == winner["genotype"] == choice["selected"]
    assert summary["best_trial"] and summary["genotype"]["path"]
    assert len(summary["retrain"]["per_class_iou"]) == len(summary["retrain"]["classes"])
    trial_events = list(exp.glob("train-*/tensorboard/events.out.tfevents.*"))
    assert len({p.parts[-3] for p in trial_events}) >= 2
    assert list((exp / "final" / "retrain" / "tensorboard").glob("events.out.tfevents.*"))


def test_the_dashboard_lists_every_trial_run_and_the_retrain(smoke_job, ray_cluster):
    """Train state tracking is on (the nodes' environment, as cluster.yaml sets it): the dashboard's Train V2 API
    on 127.0.0.1 lists each trial's Train run (``train-<trial_id>``), ended, and the finished retrain."""
    import urllib.request

    _, exp = smoke_job
    with urllib.request.urlopen(f"{ray_cluster.dashboard_url}/api/train/v2/runs/v1", timeout=30) as response:
        runs = json.loads(response.read())["train_runs"]
    status: dict[str, set[str]] = {}  # other tests of the session may have run a "retrain" too
    for run in runs:
        status.setdefault(run["name"], set()).add(run["status"])
    trials = {p.name for p in exp.glob("train-*") if p.is_dir()}
    assert trials and trials <= set(status), (sorted(trials), status)
    ended = {"FINISHED", "ABORTED"}  # ABORTED: a trial ASHA stopped early
    assert all(status[t] <= ended for t in trials) and "FINISHED" in status.get("retrain", set()), status


def test_impossible_resources_fail_fast_with_a_clear_message(ray_cluster, tmp_path):
    env = {**cluster_env(), "RAY_ADDRESS": ray_cluster.gcs_address}
    cmd = [sys.executable, "experiments/search.py", "--config", str(SMOKE), "--storage-path", str(tmp_path),
           "scaling.cpus_per_worker=16"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: one trial (tune.trial_cpus=0.1 + 2 workers of scaling.cpus_per_worker=16) needs CPU=" in \
        " ".join(proc.stderr.split())
    assert "scaling.cpus_per_worker" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*/train-*"))  # nothing started
