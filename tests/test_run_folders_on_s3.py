"""Run folders, sweeps and the final step's files on a storage URI (S3 on the session's moto server, no Ray):
the pieces that the sweep, the final step, validation and the workers use to find and write their files must
join names onto the URI's path (never after its query), read back what they wrote, and make nothing local.

The ``s3_prefix`` fixture (conftest) runs each test twice: the endpoint in the URI's query, and a plain
``s3://`` URI with ``AWS_ENDPOINT_URL`` set; the working directory must stay empty.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from helpers import PNG

from orchestrator.config import config_from_dict, load_config, save_config, with_overrides
from orchestrator.io import storage
from orchestrator.io.checkpointing import MANIFEST_FILE, latest_checkpoint_dir, read_manifest
from orchestrator.io.mirror import LocalMirror
from orchestrator.io.records import read_records, write_record


@pytest.mark.parametrize("path, parent, base", [
    ("s3://b/runs/exp/final/x.json?endpoint_override=127.0.0.1:5055&scheme=http",
     "s3://b/runs/exp/final?endpoint_override=127.0.0.1:5055&scheme=http", "x.json"),
    ("s3://b/runs/exp/", "s3://b/runs", "exp"),
    ("gs://b/a%20b/c", "gs://b/a%20b", "c"),
    ("/abs/exp/final", "/abs/exp", "final"),
])
def test_parent_and_basename_of_paths_and_uris(path, parent, base):
    assert storage.parent(path) == parent and storage.basename(path) == base


def test_a_mirrored_folder_reaches_s3_one_changed_file_at_a_time(s3_prefix):
    target = storage.join(s3_prefix.uri, "run", "tensorboard")
    mirror = LocalMirror(target)
    assert mirror.remote and not mirror.path.startswith(os.getcwd())
    with open(os.path.join(mirror.path, "a.events"), "wb") as f:
        f.write(b"one")
    assert mirror.sync() == ["a.events"] and mirror.sync() == []  # unchanged files are not sent again
    with open(os.path.join(mirror.path, "a.events"), "ab") as f:
        f.write(b" two")
    os.makedirs(os.path.join(mirror.path, "sub"))
    with open(os.path.join(mirror.path, "sub", "b.events"), "wb") as f:
        f.write(b"b")
    assert mirror.sync() == ["a.events", "sub/b.events"]
    mirror.close()
    assert not os.path.exists(mirror.path)
    assert storage.read_bytes(storage.join(target, "a.events")) == b"one two"
    assert s3_prefix.server.keys(s3_prefix.prefix) == [f"{s3_prefix.prefix}/run/tensorboard/{n}"
                                                       for n in ("a.events", "sub/b.events")]


def test_a_local_target_is_written_in_place(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tb") / "tensorboard"
    mirror = LocalMirror(str(folder))
    assert not mirror.remote and mirror.path == str(folder) and folder.is_dir()
    (folder / "x").write_bytes(b"x")
    assert mirror.sync() == []
    mirror.close()
    assert (folder / "x").read_bytes() == b"x"


def test_tensorboard_events_of_a_run_reach_s3(s3_prefix):
    from orchestrator.train.worker import open_writer

    run = storage.join(s3_prefix.uri, "train-t1")
    assert open_writer(1, run) is None  # rank 0 only
    writer = open_writer(0, run)
    writer.add_scalar("retrain/val_miou", 0.25, 1)
    writer.flush()  # what the loops call at the end of each epoch
    (first,) = storage.glob(storage.join(run, "tensorboard"), "events.out.tfevents.*")
    assert b"retrain/val_miou" in storage.read_bytes(first)
    writer.add_scalar("retrain/train_loss", 1.5, 2)
    writer.flush()
    writer.add_scalar("retrain/lr", 0.1, 3)
    writer.close()
    files = storage.glob(storage.join(run, "tensorboard"), "events.out.tfevents.*")
    assert files[0] == first and [storage.basename(f)[-5:] for f in files] == [".0000", ".0001", ".0002"]
    assert [tag in storage.read_bytes(f) for f, tag in zip(files, (b"val_miou", b"train_loss", b"retrain/lr"),
                                                           strict=True)] == [True] * 3


def _checkpoint(run: str, epoch: int) -> str:
    folder = storage.join(run, f"checkpoint_epoch{epoch:04d}")
    storage.write_json(storage.join(folder, MANIFEST_FILE), {"epoch": epoch, "search_space": {}})
    return folder


def test_a_run_folder_on_s3_reads_back_its_epochs_and_checkpoints(s3_prefix):
    from orchestrator.sweep.retrain_trials import finished_retrain
    from orchestrator.sweep.tune_driver import ended_run
    from orchestrator.train.trainers import read_epochs, run_dir
    from orchestrator.train.worker import record_epoch, run_tag

    run = run_dir(s3_prefix.uri, "train-t1")
    assert run == storage.join(s3_prefix.uri, "train-t1") and run_tag(run, "x") == "train-t1"
    assert read_epochs(run) == [] and latest_checkpoint_dir(run) is None and ended_run(run, 2) is None
    for epoch in (2, 1):
        record_epoch(run, {"epoch": epoch, "val_miou": epoch / 10})
    assert [m["epoch"] for m in read_epochs(run)] == [1, 2]
    _checkpoint(run, 1)
    assert ended_run(run, 2) is None  # its last checkpoint is older than its last epoch
    newest = _checkpoint(run, 2)
    assert latest_checkpoint_dir(run) == newest and read_manifest(newest)["epoch"] == 2
    assert ended_run(run, 2) == {"epoch": 2, "val_miou": 0.2, "checkpoint_path": newest}
    assert ended_run(run, 3) is None and finished_retrain(run, 2)["epoch"] == 2


def test_the_sweep_state_on_s3_refuses_a_rerun_and_a_changed_resume(s3_prefix, tiny_settings):
    from orchestrator.sweep.tune_driver import SweepError, check_sweep_state, experiment_dir, write_sweep_file

    cfg = config_from_dict(tiny_settings)
    path = experiment_dir(s3_prefix.uri, "exp")
    assert check_sweep_state(cfg, path, resume=False) is False
    write_sweep_file(cfg, path, 1, "running")
    assert storage.read_json(storage.join(path, "sweep.json"))["status"] == "running"
    assert load_config(storage.join(path, "config.yaml")) == cfg
    with pytest.raises(SweepError, match="already exists.*--resume"):
        check_sweep_state(cfg, path, resume=False)
    assert check_sweep_state(cfg, path, resume=True) is True
    with pytest.raises(SweepError, match=r"search.epochs \(was 3, now 5\)"):
        check_sweep_state(with_overrides(cfg, ["search.epochs=5"]), path, resume=True)


def test_records_a_killed_driver_missed_are_filled_in_once_on_s3(s3_prefix):
    from orchestrator.sweep.tune_driver import backfill_records
    from orchestrator.train.worker import record_epoch

    exp = storage.join(s3_prefix.uri, "exp")
    for epoch in (1, 2, 3):
        record_epoch(storage.join(exp, "train-t1"), {"epoch": epoch, "val_miou": epoch / 10})
    write_record(exp, "t1", {"lr": 0.1}, {"epoch": 1, "val_miou": 0.1})  # the driver recorded epoch 1 only
    grid = [SimpleNamespace(metrics={"trial_id": "t1", "epoch": 3}, config={"lr": 0.1}, path=None)]
    assert backfill_records(exp, grid) == [("t1", 2), ("t1", 3)]
    assert backfill_records(exp, grid) == []  # nothing twice
    rows = read_records(exp).to_pylist()
    assert [(r["trial_id"], r["epoch"], r["val_miou"]) for r in rows] == [("t1", 1, 0.1), ("t1", 2, 0.2),
                                                                          ("t1", 3, 0.3)]


def test_the_final_step_and_validation_read_and_write_on_s3(s3_prefix, tiny_settings):
    from orchestrator.sweep.final import write_architecture
    from orchestrator.sweep.validation import read_searched
    from search_space.genotypes import AUTODEEPLAB

    exp = storage.join(s3_prefix.uri, "exp")
    final = storage.join(exp, "final")
    files = write_architecture(AUTODEEPLAB, final, "trial t1")
    assert files["genotype"] == storage.join(final, "genotype.json")
    assert json.loads(storage.read_text(files["genotype"])) == AUTODEEPLAB.to_dict()
    assert storage.read_bytes(files["path_png"]).startswith(PNG)
    save_config(config_from_dict(tiny_settings), storage.join(exp, "config.yaml"))
    checkpoint = _checkpoint(storage.join(exp, "train-t1"), 3)
    storage.write_json(storage.join(final, "summary.json"), {
        "genotype": AUTODEEPLAB.to_dict(), "config": tiny_settings, "search": {"checkpoint": checkpoint}})
    searched = read_searched(exp)
    assert (searched.name, searched.genotype, searched.checkpoint) == ("exp", AUTODEEPLAB, checkpoint)
    assert storage.is_dir(searched.checkpoint)
