"""Faults a multi-day search meets, each provoked for real: a worker node lost mid-search (its raylet killed by
pid on the session's multi-node cluster), a sweep driver killed with SIGKILL and resumed, trials whose losses
turn NaN, a truncated checkpoint, a rename that fails mid-write. Also the security rules: checkpoints loaded
with ``weights_only=True``, YAML with ``safe_load``, the dashboard (Ray's job API) on loopback only.

Nothing finished may be lost: the interrupted searches must end with the alpha, beta and weights of the
uninterrupted one (`straight_search`, shared with tests/test_search_loop.py), and the records may have no gap
and no duplicate. The three Ray tests cost about 5 minutes on a busy 2-core machine, mostly Ray start-up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import FOUR_EPOCHS
from helpers import ROOT, constant_predictor_miou, epochs_of, figure, load_cli
from local_cluster import _processes, alive, cluster_env, pids_of_gcs, raylet_hosting

from orchestrator.config import config_from_dict, config_to_dict, load_config, save_config, with_overrides
from orchestrator.io import atomic
from orchestrator.io import checkpointing as ckpt
from orchestrator.io.records import RECORDS_FILE, read_records, write_record

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def assert_same_search(run: Path, reference: Path) -> None:
    """The run's last checkpoint holds the reference's alpha, beta, weights and step (as the resume test)."""
    a = ckpt.read_checkpoint_dir(reference / "checkpoint_epoch0004")
    b = ckpt.read_checkpoint_dir(run / "checkpoint_epoch0004")
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


# ---------------------------------------------------------------------------------------------- corrupt checkpoints


def make_checkpoints(run: Path, epochs: list[int]) -> None:
    for epoch in epochs:
        directory = run / ckpt.checkpoint_dir_name(epoch)
        directory.mkdir(parents=True)
        ckpt.write_checkpoint_dir(directory, {"epoch": epoch, "w": torch.full((64,), float(epoch))}, {"epoch": epoch})


def ray_checkpoint(path: Path):
    import ray.train

    return ray.train.Checkpoint(path=str(path))


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before_with_a_warning(tmp_path: Path):
    make_checkpoints(tmp_path, [1, 2, 3, 4])
    state_file = tmp_path / "checkpoint_epoch0003" / ckpt.STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:100])  # a crash mid-copy
    warned: list[str] = []
    state, used = ckpt.read_newest_valid(ray_checkpoint(tmp_path / "checkpoint_epoch0003"), warned.append)
    # epoch 4 is newer than what Ray's bookkeeping points at (a leftover): never jumped to
    assert state["epoch"] == 2 and used.path.endswith("checkpoint_epoch0002")
    assert len(warned) == 1
    assert str(tmp_path / "checkpoint_epoch0003") in warned[0] and "truncated or corrupt" in warned[0]


def test_a_missing_manifest_and_a_flipped_byte_are_skipped_too(tmp_path: Path):
    make_checkpoints(tmp_path, [1, 2, 3])
    (tmp_path / "checkpoint_epoch0003" / ckpt.MANIFEST_FILE).unlink()
    data = bytearray((tmp_path / "checkpoint_epoch0002" / ckpt.STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "checkpoint_epoch0002" / ckpt.STATE_FILE).write_bytes(bytes(data))
    warned: list[str] = []
    state, _ = ckpt.read_newest_valid(ray_checkpoint(tmp_path / "checkpoint_epoch0003"), warned.append)
    assert state["epoch"] == 1
    assert "cannot read manifest.json" in warned[0] and "SHA-256" in warned[1]


def test_no_valid_checkpoint_is_a_clear_error(tmp_path: Path):
    make_checkpoints(tmp_path, [1])
    (tmp_path / "checkpoint_epoch0001" / ckpt.STATE_FILE).write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint of run .* passes verification .*another name"):
        ckpt.read_newest_valid(ray_checkpoint(tmp_path / "checkpoint_epoch0001"), lambda message: None)


def test_checkpoint_names_after_a_fallback_never_reuse_a_folder():
    assert ckpt.checkpoint_dir_name(3) == "checkpoint_epoch0003"
    taken = {"checkpoint_epoch0002", "checkpoint_epoch0003", "checkpoint_epoch0003-1"}
    assert ckpt.checkpoint_dir_name(3, taken) == "checkpoint_epoch0003-2"


def rerun_checkpoints(run: Path) -> list[str]:
    """Epoch 3, its re-run after a fallback (named by `checkpoint_dir_name`), and epoch 4; their folder names."""
    names = ["checkpoint_epoch0003", ckpt.checkpoint_dir_name(3, {"checkpoint_epoch0003"}), "checkpoint_epoch0004"]
    for epoch, name in zip((3, 3, 4), names, strict=True):
        (run / name).mkdir(parents=True)
        ckpt.write_checkpoint_dir(run / name, {"epoch": epoch, "w": torch.zeros(4)}, {"epoch": epoch})
    return names


def test_a_rerun_checkpoint_orders_between_its_epoch_and_the_next(tmp_path: Path):
    """The fallback lists the older checkpoints newest first: a re-run of epoch 3 comes before the epoch 3 it
    replaced, and after epoch 4; a corrupt epoch 4 falls back to the re-run, a corrupt re-run to epoch 3."""
    plain, rerun, four = rerun_checkpoints(tmp_path)
    assert rerun == "checkpoint_epoch0003-1"
    older = ckpt.sibling_checkpoints(ray_checkpoint(tmp_path / four))
    assert [Path(c.path).name for c in older] == [rerun, plain]
    for corrupt, expected in ((four, rerun), (rerun, plain)):
        (tmp_path / corrupt / ckpt.STATE_FILE).write_bytes(b"")
        _, used = ckpt.read_newest_valid(ray_checkpoint(tmp_path / corrupt), lambda message: None)
        assert Path(used.path).name == expected


def test_the_latest_checkpoint_of_a_run_is_the_newest_rerun(tmp_path: Path):
    plain, rerun, four = rerun_checkpoints(tmp_path)
    assert ckpt.latest_checkpoint_dir(tmp_path) == tmp_path / four
    (tmp_path / four / ckpt.MANIFEST_FILE).unlink()  # epoch 4 not written yet
    assert ckpt.latest_checkpoint_dir(tmp_path) == tmp_path / rerun  # not the epoch 3 the re-run replaced


# ---------------------------------------------------------------------------------------------- divergence


def test_divergence_is_detected_from_losses_and_architecture_parameters():
    from orchestrator.train.search_loop import NUMERIC_METRICS, EpochFacts, diverged_metrics, divergence
    from search_space import SuperNet

    net = SuperNet(4, layers=2, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16))
    assert divergence(torch.tensor([2.0, 0.0], dtype=torch.float64), False, net, 1) is None
    reason = divergence(torch.tensor([float("nan"), 0.0], dtype=torch.float64), False, net, 3)
    assert reason.startswith("diverged in epoch 3: train_loss=nan") and "search.lr" in reason
    assert "arch_loss=inf" in divergence(torch.tensor([1.0, float("inf")], dtype=torch.float64), True, net, 2)
    with torch.no_grad():
        net.beta[0, 0, 0] = float("nan")
    assert "beta has non-finite values" in divergence(torch.tensor([1.0, 1.0]), True, net, 2)
    facts = EpochFacts(3, 6, 2, torch.tensor([float("nan"), 0.0]), False, (0.1, 0.003), (1.5, 0.0))
    metrics = diverged_metrics(facts, reason)
    assert metrics["diverged"] and metrics["stop_reason"] == reason and math.isnan(metrics["val_miou"])
    # whichever scalar a scheduler watches (tune.metric) is in the last report, NaN where unknown
    assert set(NUMERIC_METRICS) <= set(metrics) and math.isnan(metrics["val_pixel_acc"])
    assert metrics["lr"] == 0.1 and metrics["epoch"] == 3


def test_a_diverging_retrain_stops_with_its_reason_and_keeps_no_checkpoint_of_it(tiny_settings, tmp_path: Path):
    """The real retrain loop in Ray Train's local mode (the loop in this process, no cluster needed)."""
    from orchestrator.train.retrain_loop import retrain_fn_per_worker
    from orchestrator.train.trainers import DivergedError, check_diverged, torch_trainer
    from search_space.genotypes import AUTODEEPLAB

    cfg = config_from_dict({**tiny_settings, "retrain": {"epochs": 2, "crop_size": 32, "batch_size": 2,
                                                         "filter_multiplier": 2, "lr": 1e30}})
    directory = tmp_path / "retrain"
    loop_config = {"config": config_to_dict(cfg), "genotype": AUTODEEPLAB.to_dict(), "run_dir": str(directory)}
    result = torch_trainer(retrain_fn_per_worker, loop_config, cfg, (str(tmp_path), "retrain"), 0).fit()
    assert result.checkpoint is None  # the diverged epoch wrote none
    record = json.loads((directory / "epochs" / "epoch-0001.json").read_text())
    assert record["diverged"] and record["stop_reason"].startswith("retrain diverged in epoch 1: train_loss=")
    assert not (directory / "epochs" / "epoch-0002.json").exists()  # it stopped there
    with pytest.raises(DivergedError, match="retrain.lr"):
        check_diverged(str(directory))


def fake_result(trial_id: str, metrics: dict | None, error: Exception | None = None, **config):
    return SimpleNamespace(metrics={"trial_id": trial_id, **metrics} if metrics is not None else None,
                           error=error, config=config, path=f"/x/trial-{trial_id}")


def test_best_trial_and_leaderboard_skip_diverged_and_failed_trials():
    from orchestrator.sweep.chain import leaderboard
    from orchestrator.sweep.tune_driver import best_result

    cfg = config_from_dict({"search": {"epochs": 3, "warmup_epochs": 1}})
    grid = [
        fake_result("a", {"epoch": 1, "val_miou": float("nan"), "diverged": True, "stop_reason": "diverged in epoch 1"},
                    **{"search.lr": 1e30}),
        fake_result("b", {"epoch": 3, "val_miou": 0.2, "diverged": False}, **{"search.lr": 0.02}),
        fake_result("c", None, RuntimeError("worker died\nmore"), **{"search.lr": 0.03}),
        fake_result("d", {"epoch": 1, "val_miou": 0.9, "diverged": True, "stop_reason": "diverged in epoch 2"}),
    ]
    assert best_result(grid, "val_miou", "max").metrics["trial_id"] == "b"
    rows = {row["trial_id"]: row for row in leaderboard(grid, cfg)}
    assert rows["a"]["status"] == "diverged" and rows["a"]["stop_reason"] == "diverged in epoch 1"
    assert rows["c"]["status"] == "error" and rows["c"]["stop_reason"] == "worker died"
    assert rows["b"]["status"] == "done" and rows["b"]["stop_reason"] is None


def test_a_sweep_where_every_trial_fails_ends_with_a_clear_error(tiny_settings, tmp_path: Path, monkeypatch, capsys):
    """Through experiments/search.py: exit status 2, the reasons, no traceback (Ray replaced by a finished grid)."""
    import orchestrator.sweep.chain

    grid = [fake_result("t1", {"epoch": 1, "val_miou": float("nan"), "diverged": True,
                               "stop_reason": "diverged in epoch 1: train_loss=nan"}),
            fake_result("t2", None, RuntimeError("ActorDiedError"))]
    monkeypatch.setattr(orchestrator.sweep.chain, "run_sweep", lambda *args, **kwargs: grid)
    import orchestrator.commands.search

    cli = load_cli("search")
    monkeypatch.setattr(orchestrator.commands.search, "connect_ray", lambda address=None: None)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_settings))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--config", str(config), "--storage-path", str(tmp_path), "--name", "all-fail"])
    assert exit_.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: no trial of the sweep") and "reported a finite val_miou" in err
    assert "t1: diverged (diverged in epoch 1: train_loss=nan)" in err and "t2: error (ActorDiedError)" in err


# ---------------------------------------------------------------------------------------------- records


def test_records_a_killed_driver_missed_are_filled_in_from_the_trial(tmp_path: Path):
    from orchestrator.sweep.tune_driver import backfill_records

    epochs = {k: {"epoch": k, "val_miou": 0.1 * k, "path": [0, 1]} for k in (1, 2, 3, 4)}
    for k, metrics in epochs.items():
        atomic.write_json(tmp_path / "train-t1" / "epochs" / f"epoch-{k:04d}.json", metrics)
    write_record(tmp_path, "t1", {"search.lr": 0.1}, epochs[1])
    write_record(tmp_path, "t1", {"search.lr": 0.1}, epochs[3])  # epoch 2's report died with the driver
    grid = [fake_result("t1", {"epoch": 3, "val_miou": 0.3}, **{"search.lr": 0.1})]
    assert backfill_records(str(tmp_path), grid) == [("t1", 2)]  # epoch 4: run on after ASHA stopped it, not counted
    table = read_records(tmp_path).to_pylist()
    assert [(r["trial_id"], r["epoch"]) for r in table] == [("t1", 1), ("t1", 2), ("t1", 3)]
    assert table[1]["config/search.lr"] == 0.1 and table[1]["val_miou"] == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------- atomic writes


WRITERS = {
    "write_text": lambda p: atomic.write_text(p, "new"),
    "write_json": lambda p: atomic.write_json(p, {"new": 1}),
    "write_bytes": lambda p: atomic.write_bytes(p, b"new"),
    "save_figure": lambda p: atomic.save_figure(figure(), p),
    "save_config": lambda p: save_config(config_from_dict({}), p),
    "write_record": lambda p: write_record(p.parent, "t1", {}, {"epoch": 1, "val_miou": 0.5}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_rename_leaves_the_previous_file_and_no_temp_file(writer, tmp_path: Path, monkeypatch):
    path = tmp_path / (RECORDS_FILE if writer == "write_record" else "out.file")
    if writer == "write_record":
        write_record(tmp_path, "t0", {}, {"epoch": 1, "val_miou": 0.1})
    else:
        path.write_bytes(b"old")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        WRITERS[writer](path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the old file intact, no temp file left, nothing half-written


SOURCES = sorted([*ROOT.glob("orchestrator/**/*.py"), *ROOT.glob("experiments/*.py"), *ROOT.glob("search_space/*.py")])
RAW_WRITES = {
    "open() for writing": re.compile(r"open\([^)]*['\"][wax]b?\+?['\"]"),
    "Path.write_text/write_bytes": re.compile(r"(?<!storage)\.write_(text|bytes)\("),  # storage.write_*: the writer
    "savefig": re.compile(r"\.savefig\("),
    "pandas to a file": re.compile(r"\.to_(csv|parquet|pickle)\("),
    "torch.save": re.compile(r"torch\.save\("),
    "json.dump": re.compile(r"json\.dump\("),
    "pyarrow write_table": re.compile(r"pq\.write_table\("),
}
ALLOWED_RAW = {"orchestrator/io/storage.py": {"open() for writing", "savefig"},
               "orchestrator/io/checkpointing.py": {"torch.save"},
               "orchestrator/data/remote.py": {"open() for writing", "Path.write_text/write_bytes"}}
"""storage.py is the one writer (atomic.py delegates to it); checkpointing's torch.save writes into a temporary
folder that Ray then copies to storage (a crash mid-copy is caught by the SHA-256 in the manifest); remote.py's
dataset copy writes into a temporary folder renamed into place as a whole, its manifest last, and opens a lock
file that holds no data. TensorBoard
event files (tensorboardX) and Ray's own files are not written by this project. A write into an in-memory buffer
(``buf``) is fine."""


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_the_project_writes_goes_through_atomic(path: Path):
    rel = str(path.relative_to(ROOT))
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0]
        if "``" in code or "buf" in code:
            continue
        for what, pattern in RAW_WRITES.items():
            if pattern.search(code) and what not in ALLOWED_RAW.get(rel, ()):
                pytest.fail(f"{rel}:{number} writes a file without orchestrator.io.atomic ({what}): {line.strip()}")


# ---------------------------------------------------------------------------------------------- security


PROJECT_PY = sorted(p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "results" not in p.parts)
LOAD = "torch" + ".load("


def test_every_torch_load_is_weights_only():
    calls = [(p, line) for p in PROJECT_PY for line in p.read_text(encoding="utf-8").splitlines()
             if LOAD in line.split("#", 1)[0] and "``" not in line]
    assert calls, "expected the checkpoint reader's torch.load"
    for path, line in calls:
        assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_yaml_is_only_read_with_safe_load():
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all)\(|yaml\.(Unsafe|Full)?Loader\b")
    for path in PROJECT_PY:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if path.name != "test_faults.py":
                assert not unsafe.search(line), f"{path}:{number}: {line.strip()}"


def listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            address, state = fields[1], fields[3]
            if state == "0A" and int(address.rsplit(":", 1)[1], 16) == port:
                found.add(address.rsplit(":", 1)[0])
    return found


@pytest.mark.cluster
def test_the_dashboard_and_job_api_listen_on_loopback_only(ray_cluster):
    """Ray's job API runs arbitrary code for whoever reaches it: in tests it must not leave 127.0.0.1."""
    addresses = wait_for(lambda: listening(ray_cluster.dashboard_port), 60, "the dashboard to listen")
    assert addresses <= {"0100007F", "00000000000000000000000001000000"}, addresses  # 127.0.0.1 / ::1


@pytest.mark.cluster
def test_the_test_clusters_client_server_is_found_by_its_gcs_port_and_has_a_port_of_its_own(ray_cluster):
    """The head's Ray client server names no temp dir and, once orphaned, descends from no node: the cluster's
    stop finds it only by the GCS address on its command line. On Ray's default port (10001) a second cluster on
    the machine would fight over it."""
    procs = _processes()
    servers = {pid for pid in ray_cluster.pids() if "ray.util.client.server" in procs.get(pid, (0, ""))[1]}
    assert len(servers) == 1, servers
    assert servers <= pids_of_gcs(ray_cluster.port) and "--port=10001" not in procs[servers.pop()][1]


# ---------------------------------------------------------------------------------------------- with Ray


def fit_in_thread(cfg, storage: Path, name: str) -> tuple[threading.Thread, dict]:
    from orchestrator.train.trainers import run_single_search

    outcome: dict = {}

    def target():
        try:
            outcome["result"] = run_single_search(cfg, str(storage), name)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.cluster
@pytest.mark.slow
def test_a_lost_worker_node_loses_no_finished_epoch_and_changes_nothing(ray_cluster, ray_session, straight_search,
                                                                        tiny_settings, tmp_path: Path):
    """Kill the raylet of the node hosting the Train workers after the first checkpoint, add a replacement node:
    the run restarts its workers, resumes from its checkpoint and ends exactly as the uninterrupted search."""
    cfg = with_overrides(config_from_dict(tiny_settings), [*FOUR_EPOCHS, "runtime.max_failures=3"])
    run = tmp_path / "lost-node"
    start = time.time()
    thread, outcome = fit_in_thread(cfg, tmp_path, "lost-node")
    wait_for(lambda: (run / "checkpoint_manager_snapshot.json").exists() or "error" in outcome, 600,
             "the first checkpoint", poll=0.05)
    assert "error" not in outcome, outcome.get("error")
    label, raylet = wait_for(lambda: raylet_hosting("ray::RayTrainWorker", ray_cluster.root), 30,
                             "the Train workers' raylet", poll=0.05)
    os.kill(raylet, signal.SIGKILL)  # the node is gone: its raylet, and with it the workers it hosted
    finished_before = len(epochs_of(run))  # read after the kill: the checked moment is before the last epoch
    killed_at = time.time() - start
    assert label != "head" and finished_before < 4, f"the kill landed after {finished_before} of 4 epochs"
    wait_for(lambda: not alive(raylet), 10, "the raylet to die")
    ray_cluster.add_node("spare")  # resources return, as an autoscaler would bring them; it stays for later tests
    thread.join(900)
    assert not thread.is_alive(), "the run did not finish after the node loss"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].metrics["epoch"] == 4
    epochs = epochs_of(run)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]  # no gap, one record per epoch
    assert epochs[0]["resumed_from_epoch"] == 0
    assert epochs[-1]["resumed_from_epoch"] >= 1  # the last epoch ran in a restarted worker group, from a checkpoint
    assert_same_search(run, straight_search)
    print(f"\nlost node {label} (raylet {raylet}) at {killed_at:.1f} s after {finished_before} epochs; "
          f"run finished after {time.time() - start:.1f} s")


@pytest.mark.cluster
@pytest.mark.slow
def test_a_corrupt_latest_checkpoint_is_skipped_and_the_search_still_ends_the_same(ray_session, straight_search,
                                                                                    tiny_settings, tmp_path: Path):
    from orchestrator.train.trainers import run_single_search

    cfg = with_overrides(config_from_dict(tiny_settings), FOUR_EPOCHS)
    run = tmp_path / "corrupt"
    assert run_single_search(cfg, str(tmp_path), "corrupt", stop_at_epoch=2).metrics["epoch"] == 2
    state = run / "checkpoint_epoch0002" / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated, manifest intact
    assert run_single_search(cfg, str(tmp_path), "corrupt").metrics["epoch"] == 4
    epochs = epochs_of(run)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert [e["resumed_from_epoch"] for e in epochs] == [0, 1, 1, 1]  # epoch 2 was run again from epoch 1
    assert_same_search(run, straight_search)
    assert sorted(p.name for p in run.glob("checkpoint_epoch*")) == ["checkpoint_epoch0003", "checkpoint_epoch0004"]


KILLED_SWEEP = {
    "search": {"epochs": 3, "warmup_epochs": 1, "grad_clip": None},
    # search.lr=1e30 diverges within its first epoch (the weight decay step alone overflows float32)
    "tune": {"param_space": {"search.lr": {"grid": [1.0e30, 0.025, 0.02]}}, "scheduler": "fifo",
             "max_concurrent_trials": 1},
    "retrain": {"epochs": 8, "crop_size": 32, "batch_size": 2, "filter_multiplier": 2, "num_workers": 2},
}


def sweep_progress(exp: Path) -> dict[str, list[dict]]:
    """trial id -> its recorded epochs (from the per-epoch Parquet files the driver writes)."""
    import pyarrow.parquet as pq

    out = {}
    for directory in sorted((exp / "records").glob("*")):
        rows = []
        for f in sorted(directory.glob("epoch-*.parquet")):
            with contextlib.suppress(OSError):  # being replaced right now
                rows += pq.read_table(f).to_pylist()
        out[directory.name] = rows
    return out


def kill_point(exp, read=sweep_progress) -> dict | None:
    """Progress (``read(exp)``) once a healthy trial has finished and another has recorded an epoch but not its
    last."""
    progress = read(exp)
    finished = [t for t, rows in progress.items() if rows and rows[-1]["epoch"] == 3]
    running = [t for t, rows in progress.items() if rows and rows[-1]["epoch"] < 3 and not rows[-1].get("diverged")]
    return progress if finished and running else None


def files_of(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


@pytest.mark.cluster
@pytest.mark.slow
def test_a_killed_sweep_driver_resumes_without_rerunning_or_losing_anything(ray_cluster, ray_session, tiny_settings,
                                                                           tmp_path: Path):
    import pandas as pd

    config = tmp_path / "sweep.yaml"
    settings = {**tiny_settings, **{k: {**tiny_settings.get(k, {}), **v} for k, v in KILLED_SWEEP.items()}}
    config.write_text(yaml.safe_dump(settings))
    load_config(config)
    env = {**cluster_env(), "RAY_ADDRESS": ray_cluster.gcs_address}
    command = [sys.executable, "experiments/search.py", "--config", str(config), "--storage-path", str(tmp_path),
               "--name", "killed"]
    exp = tmp_path / "killed"
    start = time.time()
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        progress = wait_for(lambda: kill_point(exp) or driver.poll() is not None, 900, "a trial mid-run", poll=0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    assert isinstance(progress, dict), (tmp_path / "first.log").read_text()[-3000:]
    ended = [t for t, rows in progress.items() if rows[-1]["epoch"] == 3 or rows[-1].get("diverged")]
    running = [t for t in progress if t not in ended]
    before = {t: files_of(exp / f"train-{t}") for t in ended}
    # The killed driver's trials, their Train controllers and workers go with it: every CPU comes back.
    wait_for(lambda: ray_session.available_resources().get("CPU", 0) >= ray_session.cluster_resources()["CPU"] - 1e-6,
             120, "the killed driver's actors to be cleaned up", poll=1)
    killed_at = time.time() - start

    resumed = subprocess.run([*command, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = resumed.stdout + resumed.stderr
    (tmp_path / "resume.log").write_text(out)
    assert resumed.returncode == 0, out[-4000:]
    assert "resuming the sweep" in out
    summary = json.loads((exp / "final" / "summary.json").read_text())
    records = pd.read_parquet(exp / "records.parquet")
    assert not records.duplicated(["trial_id", "epoch"]).any()
    assert records["trial_id"].nunique() == 3
    for trial_id, group in records.groupby("trial_id"):
        epochs = sorted(group["epoch"])
        assert epochs == list(range(1, len(epochs) + 1)), (trial_id, epochs)  # no gap
        diverged = group["diverged"].fillna(False).astype(bool)
        if group["config/search.lr"].iloc[0] == 1.0e30:
            assert epochs == [1] and diverged.all() and "diverged in epoch 1" in group["stop_reason"].iloc[0]
            assert summary["best_trial"] != trial_id  # the final actor ignored it
        else:
            assert epochs == [1, 2, 3] and not diverged.any()
    for trial_id in ended:  # finished before the kill: not run again
        assert files_of(exp / f"train-{trial_id}") == before[trial_id], trial_id
    for trial_id in running:  # running at the kill: continued from its checkpoint, not from scratch
        last = epochs_of(exp / f"train-{trial_id}")[-1]
        assert last["epoch"] == 3 and last["resumed_from_epoch"] >= 1, last
    assert "diverged" in out  # the leaderboard shows the diverged trial and why
    assert json.loads((exp / "sweep.json").read_text())["status"] == "finished"
    assert summary["retrain"]["val_miou"] > constant_predictor_miou(summary["config"], "select")
    print(f"\ndriver killed at {killed_at:.0f} s ({len(ended)} trials ended, {running} running); "
          f"whole test {time.time() - start:.0f} s")
