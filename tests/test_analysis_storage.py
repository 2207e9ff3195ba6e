"""`python -m orchestrator.analyze` on an experiment stored on S3 (moto, the session's ``s3_server``; no Ray).

A small experiment laid out as a finished sweep leaves it (sweep.json, config.yaml, Tune's experiment and
variant state, per-epoch records and records.parquet, rank 0's ``train-*/epochs/``, Tune's ``trial-*/`` logs,
``final/``), with one epoch known only to Tune's result.json, one only to rank 0's epoch file and one failed
trial, is analysed locally and, byte for byte the same, from S3: the printed report must be the same but for
the experiment's address, and the outputs must land on S3. Each S3 run is done with the endpoint in the URI's
query and with a plain ``s3://`` URI and ``AWS_ENDPOINT_URL``, in an empty working directory that must stay so.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import PNG, ROOT, run_module

from orchestrator.analysis.cli import main
from orchestrator.analysis.outputs import write_hparams_view
from orchestrator.analysis.read import load_experiment
from orchestrator.analysis.trials import rank_trials
from orchestrator.io import storage
from orchestrator.io.records import read_table, write_record

T0 = 1795981728.0  # Tune's start time of the sweep
GENOTYPES = [
    {"cell": [[["sep_conv_5x5", 0], ["avg_pool_3x3", 1]], [["dil_conv_5x5", 1], ["dil_conv_3x3", 2]],
              [["skip_connect", 2], ["dil_conv_3x3", 3]]], "path": [1, 2, 2, 1]},
    {"cell": [[["avg_pool_3x3", 0], ["dil_conv_5x5", 1]], [["dil_conv_5x5", 0], ["max_pool_3x3", 1]],
              [["sep_conv_3x3", 0], ["avg_pool_3x3", 2]]], "path": [0, 0, 0, 1]},
]
TRIALS = {  # trial: (search.arch_lr, val_miou per epoch, Tune's status, epochs in records/, in result.json)
    "e52ba_00000": (0.003, [0.05, 0.11, 0.16], "TERMINATED", 2, 3),  # epoch 3: Tune's result.json only
    "e52ba_00001": (0.01, [0.06, 0.12, 0.11], "TERMINATED", 2, 2),  # epoch 3: rank 0's epoch file only
    "e52ba_00002": (0.03, [0.04], "ERROR", 1, 1),
}
OUTPUTS = ["alpha-e52ba_00000.png", "beta-e52ba_00000.png", "curves.png", "hparams.png", "leaderboard.csv",
           "paths.png", "results.parquet"]
"""What the analysis writes with ``--top 1`` (alpha and beta of the best trial only: plots take most of the time)."""


def _metrics(trial_id: str, epoch: int, score: float, rng: np.random.Generator) -> dict:
    """One epoch's report, with the keys the search loop and Tune put in it."""
    genotype = GENOTYPES[(epoch + int(trial_id[-1])) % 2]
    return {"epoch": epoch, "step": 8 * epoch, "val_miou": score, "val_loss": 1.8 - score, "val_pixel_acc": 0.43,
            "per_class_iou": [0.43] + [score] * 7, "train_loss": 1.79 - 0.1 * epoch, "arch_updates": epoch > 1,
            "genotype": json.dumps(genotype), "genotype_changed": epoch > 1, "path": genotype["path"],
            "alpha_entropy": 2.07, "beta_entropy": 0.89, "beta_entropy_per_layer": [0.69, 0.89, 0.96, 0.89],
            "param_free_ops": 3, "path_depth": max(genotype["path"]), "lr": 0.0245, "epoch_seconds": 14.5,
            "alpha": (1e-3 * rng.normal(size=(9, 8))).tolist(), "beta": (1e-3 * rng.normal(size=(4, 4, 3))).tolist(),
            "diverged": False, "stop_reason": None, "trial_id": trial_id, "timestamp": int(T0) + 60 * epoch,
            "training_iteration": epoch, "hostname": "vm"}


def _summary() -> dict:
    candidates = [{"label": f"candidate-{k}", "genotype": g, "path": g["path"], "val_miou": 0.22 + 0.01 * k,
                   "epochs": 5} for k, g in enumerate(GENOTYPES)]
    selection = {"short_epochs": 5, "winner": "candidate-1", "candidates": candidates}
    return {"best_trial": "e52ba_00000", "hyperparameters": {"search.arch_lr": 0.003},
            "search": {"metric": "val_miou", "mode": "max", "value": 0.16},
            "retrain": {"epochs": 20, "seconds": 80.2, "val_miou": 0.2881}, "genotype": GENOTYPES[0],
            "selection": {"path": "viterbi", "top_k": 2, "short_retrains": selection}}


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def build_experiment(path: Path) -> Path:
    """The folder a finished sweep leaves (checkpoints, TensorBoard files and PNGs left out)."""
    rng = np.random.default_rng(0)
    _write(path / "sweep.json", json.dumps({
        "status": "finished", "updated": T0 + 600, "config_hash": "daf5378e", "metric": "val_miou", "mode": "max",
        "epochs": 3, "scheduler": {"kind": "asha", "time_attr": "epoch", "grace_period": 2, "max_t": 3},
        "param_space": {"search.arch_lr": {"grid": [0.003, 0.01, 0.03]}}, "num_samples": 1}, indent=2))
    _write(path / "config.yaml", "name: null\nsearch_space:\n  layers: 4\n  blocks: 3\nsearch:\n  epochs: 3\n")
    _write(path / "basic-variant-state-2026-11-29_19-48-48.json", b"\x80\x04}\x94.")  # a pickle, unread
    trial_data = []
    for trial_id, (arch_lr, scores, status, in_records, in_results) in TRIALS.items():
        config = {"search.arch_lr": arch_lr}
        reports = [_metrics(trial_id, epoch, score, rng) for epoch, score in enumerate(scores, start=1)]
        for m in reports:
            _write(path / f"train-{trial_id}" / "epochs" / f"epoch-{m['epoch']:04d}.json", json.dumps(m, indent=2))
            if m["epoch"] <= in_records:
                write_record(path, trial_id, config, m)
        _write(path / f"train-{trial_id}" / "config.yaml", f"search:\n  arch_lr: {arch_lr}\n")
        trial = path / f"trial-{trial_id}"
        _write(trial / "params.json", json.dumps(config, indent=2))
        _write(trial / "result.json", "".join(json.dumps({**m, "config": config}) + "\n"
                                              for m in reports[:in_results]))
        _write(trial / "progress.csv", "epoch,val_miou\n" + "".join(f"{m['epoch']},{m['val_miou']}\n"
                                                                     for m in reports[:in_results]))
        if status == "ERROR":
            _write(trial / "error.txt", "Traceback (most recent call last):\nRuntimeError: worker died\n")
        trial_data.append([json.dumps({"trial_id": trial_id, "status": status, "config": config,
                                       "evaluated_params": config}),
                           json.dumps({"last_result": {"epoch": len(scores)}, "last_result_time": T0 + 500,
                                       "error_filename": "error.txt" if status == "ERROR" else None})])
    _write(path / "experiment_state-2026-11-29_19-48-48.json",
           json.dumps({"trial_data": trial_data, "runner_data": {}, "stats": {"start_time": T0}}))
    summary = _summary()
    _write(path / "final" / "summary.json", json.dumps(summary, indent=2))
    _write(path / "final" / "selection.json", json.dumps(summary["selection"]["short_retrains"]))
    _write(path / "final" / "genotype.json", json.dumps(GENOTYPES[0]))
    return path


def upload(local: Path, uri: str) -> None:
    """Every file of the local folder to the same names under ``uri``."""
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(storage.join(uri, file.relative_to(local).as_posix()), file.read_bytes())


def normalized(text: str, base: str) -> str:
    """The report with the experiment's address (and the folders under it) as ``<EXP>``."""
    for sub in (("tensorboard", "hparams"), ("analysis",), ()):
        text = text.replace(storage.join(base, *sub), "/".join(("<EXP>", *sub)))
    return text


def run_main(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue()


def sessions_of(s3) -> dict[str, list[str]]:
    """The event files of the hparams view on S3, per trial (pyarrow's empty ``folder/`` markers left out)."""
    found: dict[str, list[str]] = {}
    for key in s3.server.keys(f"{s3.prefix}/exp/tensorboard/hparams/"):
        if not key.endswith("/"):
            found.setdefault(key.split("/")[-2], []).append(key.split("/")[-1])
    return found


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The experiment as the sweep left it; never analysed itself (copies are)."""
    return build_experiment(tmp_path_factory.mktemp("source") / "exp")


@pytest.fixture(scope="module")
def local(source, tmp_path_factory) -> SimpleNamespace:
    """The CLI run on a local copy of the experiment: its report and the analysis folder."""
    exp = tmp_path_factory.mktemp("local") / "exp"
    shutil.copytree(source, exp)
    text = run_main(str(exp), "--top", "1")
    return SimpleNamespace(path=exp, text=text, analysis=exp / "analysis")


@pytest.fixture(params=["query", "env"])
def s3(request, s3_server, source, monkeypatch, tmp_path: Path):
    """The experiment uploaded to a fresh prefix, as ``uri``: the endpoint in the URI's query ("query", with no
    ``AWS_ENDPOINT_URL``) or a plain ``s3://`` URI with ``AWS_ENDPOINT_URL`` set ("env"). The test runs in the
    empty ``tmp_path / "cwd"``, which must still be empty afterwards: nothing local is made from a URI."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    if request.param == "query":
        monkeypatch.delenv("AWS_ENDPOINT_URL")
    storage.forget_filesystems()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    prefix = f"runs/{uuid.uuid4().hex[:12]}"
    base = s3_server.uri(prefix) if request.param == "query" else s3_server.plain_uri(prefix)
    uri = storage.join(base, "exp")
    uploaded = time.time()  # before the upload: a lower bound of the objects' mtimes
    upload(source, uri)
    yield SimpleNamespace(uri=uri, base=base, prefix=prefix, server=s3_server, form=request.param, uploaded=uploaded)
    storage.forget_filesystems()
    assert list(cwd.iterdir()) == [], "a URI made something local"


def test_the_local_analysis_reads_every_source(local):
    assert "state: finished (sweep.json says finished; final/summary.json" in local.text
    assert "7 epoch records from 3 trials; 3 trials in Tune's state" in local.text
    assert "final retrain of trial e52ba_00000" in local.text and "candidate-1 (winner)" in local.text
    assert sorted(p.name for p in local.analysis.iterdir()) == OUTPUTS
    sources = pq.read_table(local.analysis / "results.parquet").to_pandas().set_index(["trial_id", "epoch"])
    assert sources.loc[("e52ba_00000", 3), "source"] == "tune-result-json"
    assert sources.loc[("e52ba_00001", 3), "source"] == "epochs-json"
    assert "e52ba_00002 error: RuntimeError: worker died (trial-e52ba_00002/error.txt)" in local.text
    assert "3 trials ended with 2 distinct genotypes" in local.text


def test_the_analysis_of_a_uri_matches_the_local_one(s3, local):
    text = run_main(s3.uri, "--top", "1")
    assert normalized(text, s3.uri) == normalized(local.text, str(local.path))
    assert f"experiment {s3.uri}\n" in text
    prefix = f"{s3.prefix}/exp/analysis/"
    assert [k[len(prefix):] for k in s3.server.keys(prefix)] == OUTPUTS
    out = storage.join(s3.uri, "analysis")
    assert storage.read_bytes(storage.join(out, "leaderboard.csv")) == (local.analysis / "leaderboard.csv").read_bytes()
    assert all(storage.read_bytes(storage.join(out, name)).startswith(PNG) for name in OUTPUTS if "png" in name)
    remote = read_table(storage.join(out, "results.parquet")).to_pandas()
    here = pq.read_table(local.analysis / "results.parquet").to_pandas()
    assert remote.drop(columns="time_recorded").equals(here.drop(columns="time_recorded"))
    from_mtime = remote[remote["source"] == "epochs-json"]["time_recorded"]
    assert len(from_mtime) == 1 and s3.uploaded - 1 <= from_mtime.iloc[0] <= time.time() + 1  # the S3 object's mtime
    sessions = sessions_of(s3)
    assert sorted(sessions) == sorted(TRIALS) and all(len(files) == 1 for files in sessions.values())


@pytest.mark.parametrize("s3", ["query"], indirect=True)
def test_compare_written_to_another_uri_and_the_view_rewritten(s3):
    out = storage.join(s3.base, "elsewhere", "an")
    text = run_main(s3.uri, "--compare", s3.uri, "--out", out, "--top", "1")
    assert f"wrote to {out}: leaderboard.csv, results.parquet" in text
    assert f"wrote: {storage.join(out, 'compare.csv')}" in text and "same genotype" in text
    keys = s3.server.keys(f"{s3.prefix}/elsewhere/an/")
    assert [k[len(f"{s3.prefix}/elsewhere/an/"):] for k in keys] == sorted(
        ["compare.csv", *OUTPUTS, *(f"compare-exp/{name}" for name in OUTPUTS)])
    assert not s3.server.keys(f"{s3.prefix}/exp/analysis/")
    exp = load_experiment(s3.uri)
    assert exp.path == s3.uri and exp.name == "exp"
    before = sessions_of(s3)
    time.sleep(1.1)  # tensorboardX names its event files by the second
    write_hparams_view(exp, rank_trials(exp))  # a rerun replaces the view instead of adding sessions
    after = sessions_of(s3)
    assert sorted(after) == sorted(TRIALS) and all(len(files) == 1 for files in after.values())
    assert all(after[t] != before[t] for t in TRIALS)
    assert main([storage.join(s3.base, "nothing")]) == 2


def test_the_command_on_a_plain_uri_with_the_endpoint_in_the_environment(s3_server, source, tmp_path, monkeypatch):
    """``python -m orchestrator.analyze s3://bucket/prefix/exp`` with ``AWS_ENDPOINT_URL`` (and credentials) in
    the environment, as a user runs it."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    storage.forget_filesystems()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    prefix = f"runs/{uuid.uuid4().hex[:12]}"
    exp = s3_server.plain_uri(f"{prefix}/exp")
    upload(source, exp)
    storage.forget_filesystems()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = run_module("orchestrator.analyze", exp, "--top", "1", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"experiment {exp}\nstate: finished" in proc.stdout and f"wrote to {exp}/analysis: " in proc.stdout
    assert s3_server.keys(f"{prefix}/exp/analysis/") == [f"{prefix}/exp/analysis/{name}" for name in OUTPUTS]
    assert list(cwd.iterdir()) == []
