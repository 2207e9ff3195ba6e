"""The cluster path as users run it, on cloud storage: the search chain submitted with ``ray job submit`` to the
multi-node session cluster with ``--storage-path s3://...`` (moto's S3 server on 127.0.0.1, the endpoint in the
URI's query, dummy credentials in the job's runtime environment), its driver killed mid-sweep, the job submitted
again with ``--resume``, then ``analyze s3://...``. Every file lives in the bucket: records, epochs, checkpoints,
TensorBoard, ``final/``, the analysis; nothing local is made from the URI.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import constant_predictor_miou
from local_cluster import BIN, kill_pids, pids_of
from s3_server import CREDENTIALS
from test_faults import KILLED_SWEEP, kill_point, wait_for

from orchestrator.io import storage
from orchestrator.io.records import read_records

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def progress_on(exp: str) -> dict[str, list[dict]]:
    """trial id -> its recorded epochs (the per-epoch Parquet objects the driver writes)."""
    out: dict[str, list[dict]] = {}
    for f in storage.glob(storage.join(exp, "records"), "*/epoch-*.parquet"):
        trial = storage.basename(storage.parent(f))
        out.setdefault(trial, []).extend(pq.read_table(io.BytesIO(storage.read_bytes(f))).to_pylist())
    return out


def objects(server, prefix: str) -> dict[str, str]:
    """key -> ETag of every object under ``prefix``: what changes when an object is written again."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def submit(cluster, config: Path, uri: str, name: str, *extra: str) -> list[str]:
    """``ray job submit`` of the search, with the storage credentials (not the endpoint: it is in the URI) in
    the job's runtime environment, as a user passes them where the nodes have no instance role."""
    runtime_env = {"env_vars": dict(CREDENTIALS)}
    return [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
            "--runtime-env-json", json.dumps(runtime_env), "--", "python", "experiments/search.py",
            "--config", str(config), "--storage-path", uri, "--name", name, *extra]


def test_a_search_on_s3_survives_a_killed_driver_and_is_analysed_from_its_uri(
        ray_cluster, ray_session, s3_server, tiny_settings, tmp_path_factory, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    storage.forget_filesystems()
    prefix = f"cluster/{uuid.uuid4().hex[:10]}"
    uri, name = s3_server.uri(prefix), "killed-s3"
    exp = storage.join(uri, name)
    work = tmp_path_factory.mktemp("s3-job")
    config = work / "sweep.yaml"
    settings = {**tiny_settings, **{k: {**tiny_settings.get(k, {}), **v} for k, v in KILLED_SWEEP.items()}}
    config.write_text(yaml.safe_dump(settings))
    env = {**ray_cluster.env, **CREDENTIALS}
    env.pop("AWS_ENDPOINT_URL", None)
    before_root = sorted(p.name for p in ROOT.iterdir())

    start = time.time()
    log = (work / "first.log").open("w")
    client = subprocess.Popen(submit(ray_cluster, config, uri, name), env=env, cwd=work, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        progress = wait_for(lambda: kill_point(exp, progress_on) or client.poll() is not None, 900,
                            "a trial mid-run", poll=0.5)
    finally:  # the job's driver (its entrypoint, found by its command line) dies, and the client with it
        kill_pids(pids_of(f"--name {name}"))
        client.wait(30)
    assert isinstance(progress, dict), (work / "first.log").read_text()[-3000:]
    ended = [t for t, rows in progress.items() if rows[-1]["epoch"] == 3 or rows[-1].get("diverged")]
    running = [t for t in progress if t not in ended]
    kept = {t: objects(s3_server, f"{prefix}/{name}/train-{t}/") for t in ended}
    wait_for(lambda: ray_session.available_resources().get("CPU", 0) >= ray_session.cluster_resources()["CPU"] - 1e-6,
             180, "the killed driver's actors to be cleaned up", poll=1)

    resumed = subprocess.run(submit(ray_cluster, config, uri, name, "--resume"), env=env, cwd=work,
                             capture_output=True, text=True, timeout=900)
    out = resumed.stdout + resumed.stderr
    (work / "resume.log").write_text(out)
    assert resumed.returncode == 0 and "resuming the sweep" in out, out[-4000:]

    records = read_records(exp).to_pandas()
    assert not records.duplicated(["trial_id", "epoch"]).any() and records["trial_id"].nunique() == 3
    for trial_id, group in records.groupby("trial_id"):
        epochs = sorted(group["epoch"])
        healthy = group["config/search.lr"].iloc[0] != 1.0e30
        assert epochs == ([1, 2, 3] if healthy else [1]), (trial_id, epochs)  # nothing lost, nothing twice
    for trial_id in ended:  # finished before the kill: not run again
        assert objects(s3_server, f"{prefix}/{name}/train-{trial_id}/") == kept[trial_id], trial_id
    for trial_id in running:  # continued from its checkpoint
        last = storage.read_json(storage.join(exp, f"train-{trial_id}", "epochs", "epoch-0003.json"))
        assert last["resumed_from_epoch"] >= 1, last
    summary = storage.read_json(storage.join(exp, "final", "summary.json"))
    assert summary["retrain"]["val_miou"] > constant_predictor_miou(summary["config"], "select")
    assert storage.is_dir(summary["search"]["checkpoint"])
    assert storage.read_json(storage.join(exp, "sweep.json"))["status"] == "finished"
    keys = objects(s3_server, f"{prefix}/{name}/")
    for part in ("/tensorboard/events.out.tfevents.", "/final/genotype.json", "/final/path.png", "/records.parquet",
                 "/final/retrain/epochs/epoch-0001.json", "/final/retrain/tensorboard/events.out.tfevents."):
        assert any(part in k for k in keys), part
    assert not any("?" in k or "scheme=" in k for k in keys)  # the query never became part of a key

    analysed = subprocess.run([sys.executable, "-m", "orchestrator.analyze", exp], env=env, cwd=work,
                              capture_output=True, text=True, timeout=300)
    assert analysed.returncode == 0, analysed.stdout[-3000:] + analysed.stderr[-3000:]
    assert summary["best_trial"] in analysed.stdout and "diverged" in analysed.stdout
    assert storage.list_dir(storage.join(exp, "analysis"))
    assert sorted(p.name for p in work.iterdir()) == ["first.log", "resume.log", "sweep.yaml"]
    assert sorted(p.name for p in ROOT.iterdir()) == before_root  # no "s3:" folder anywhere
    print(f"\ns3 sweep: killed after {len(ended)} trials ended ({running} running); whole test "
          f"{time.time() - start:.0f} s")


def test_the_chain_reads_its_dataset_from_the_bucket_on_every_node(ray_cluster, s3_server, tiny_settings,
                                                                   tmp_path_factory, monkeypatch):
    """``data.root: s3://...``: a small Cityscapes tree uploaded once; the chain (search, selection, retrain) runs
    through ``ray job submit`` with every role's images copied into the node cache, verified, and nothing else."""
    from test_data import build_cityscapes
    from test_remote_data import RAW, upload

    from orchestrator.data.remote import CACHE_ENV, MANIFEST

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    storage.forget_filesystems()
    work = tmp_path_factory.mktemp("s3-data")
    local, _ = build_cityscapes(work / "upload", 16, RAW)
    data_uri = s3_server.uri(f"datasets/{uuid.uuid4().hex[:10]}/cityscapes")
    files = upload(local, data_uri)
    settings = {**tiny_settings, "search": {"epochs": 2, "warmup_epochs": 1},
                "data": {**tiny_settings["data"], "dataset": "cityscapes", "root": data_uri, "options": {},
                         "val_options": {}, "report_options": {}, "select_split": "holdout", "holdout": 2,
                         "report_split": "val"},
                "retrain": {"epochs": 1, "crop_size": 32, "batch_size": 2, "filter_multiplier": 2}}
    config = work / "bucket-data.yaml"
    config.write_text(yaml.safe_dump(settings))
    cache = work / "node-cache"
    runtime_env = {"env_vars": {**CREDENTIALS, CACHE_ENV: str(cache)}}
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps(runtime_env), "--", "python", "experiments/search.py",
           "--config", str(config), "--storage-path", str(work / "results"), "--name", "bucket-data"]
    env = {**ray_cluster.env, **CREDENTIALS}
    env.pop("AWS_ENDPOINT_URL", None)
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((work / "results" / "bucket-data" / "final" / "summary.json").read_text())
    assert summary["splits"] == {"val": "cityscapes train holdout (2 images, split_seed 0)",
                                 "test": "cityscapes val"}, summary["splits"]
    assert summary["retrain"]["test_miou"] >= 0.0  # the report split was read, from the copy
    copies = list(cache.glob(f"*/{MANIFEST}"))
    assert len(copies) == 1, copies  # one node cache on this machine: one verified copy, shared by every worker
    copied = [p for p in copies[0].parent.rglob("*") if p.is_file() and p.name != MANIFEST]
    assert len(copied) == files and not list(cache.glob(".*partial-*"))
