"""Bad input through the entry points a user runs: ``experiments/search.py`` and ``experiments/retrain.py``.

Each case must end with one ``error: ...`` paragraph on stderr naming the file, key or value and what was expected,
exit status 2, and no Python traceback. The library-level refusals are tested beside their code
(tests/test_config.py, tests/test_data.py, tests/test_search_space.py); these tests check that each reaches the
user as a message. Most run the CLI in this process (a stray exception would fail the test); two run it as a
real process to check the exit status and the absence of a traceback end to end. Cases that need a cluster (resources,
checkpoints, sweeps) use the session's, and stop before any worker starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, run_cli_captured
from local_cluster import cluster_env

from orchestrator.config import config_hash, load_config, with_overrides
from orchestrator.io import checkpointing as ckpt
from search_space import AUTODEEPLAB


@pytest.fixture
def tiny_yaml(tiny_settings, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_settings, "storage_path": str(tmp_path / "results"),
                                    "retrain": {"epochs": 1, "crop_size": 32, "batch_size": 2,
                                                "filter_multiplier": 2, "num_workers": 2}}))
    return path


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, fragments", [
    ("search.warmup=3", ["unknown key 'search.warmup'", "did you mean 'search.warmup_epochs'"]),
    ("search.epochs=two", ["search.epochs = 'two'", "expected int"]),
    ("search_space.filter_multiplier=0", ["search_space.filter_multiplier = 0", "expected an integer >= 1"]),
    ("search.warmup_epochs=3", ["search.warmup_epochs = 3", "warmup_epochs < search.epochs (3)"]),
    ("search.lr=0", ["search.lr = 0.0", "expected a learning rate > 0"]),
    ("search.arch_lr=-0.1", ["search.arch_lr = -0.1", "expected a learning rate > 0"]),
    ("retrain.lr=0", ["retrain.lr = 0.0", "expected a learning rate > 0"]),
    ("data.crop_size=16", ["data.crop_size = 16", "at least 32 (the network's largest downsample rate)"]),
    ("retrain.crop_size=8", ["retrain.crop_size = 8", "at least 32"]),
])
def test_bad_config_values_are_refused_by_the_search_cli(override, fragments, tiny_yaml: Path, capsys):
    code, _, err = run_cli_captured("search", ["--config", str(tiny_yaml), "--no-tune", override], capsys)
    assert_user_error(code, err, str(tiny_yaml), *fragments)


def test_a_bad_value_in_the_file_names_the_file(tiny_settings, tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**tiny_settings, "search_space": {"filter_multiplier": -2}}))
    code, _, err = run_cli_captured("search", ["--config", str(path)], capsys)
    assert_user_error(code, err, f"{path}: search_space.filter_multiplier = -2: expected an integer >= 1")


@pytest.mark.parametrize("text, fragment", [
    ("search: [1, 2", "not valid YAML"),
    ("- a list", "the top level must be a mapping"),
])
def test_unreadable_config_files_are_refused(text, fragment, tmp_path: Path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    code, _, err = run_cli_captured("search", ["--config", str(path)], capsys)
    assert_user_error(code, err, str(path), fragment)
    missing = tmp_path / "missing.yaml"
    code, _, err = run_cli_captured("search", ["--config", str(missing)], capsys)
    assert_user_error(code, err, f"cannot read config file {missing}")


def test_a_user_error_in_a_real_process_has_no_traceback(tiny_yaml: Path):
    cmd = [sys.executable, "experiments/search.py", "--config", str(tiny_yaml), "search.arch_lrr=0.1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=cluster_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "unknown key 'search.arch_lrr'; did you mean 'search.arch_lr'?" in " ".join(proc.stderr.split())


# ---------------------------------------------------------------------------------------------- data


def folder_dataset(root: Path, masks: bool = True, mask_value: int = 1) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(root / split / "images" / f"{i}.png")
            if masks:
                Image.fromarray(np.full((40, 40), mask_value, np.uint8)).save(root / split / "masks" / f"{i}.png")
    return root


@pytest.mark.parametrize("case", ["unknown", "missing root", "image without label", "bad label", "too few"])
def test_bad_datasets_are_refused_before_anything_starts(case, tiny_yaml: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    overrides, fragments = {
        "unknown": (["data.dataset=imagenet"], ["unknown dataset 'imagenet'", "expected one of synthetic"]),
        "missing root": ([f"data.root={root}"], [f"dataset root {root} does not exist"]),
        "image without label": ([f"data.root={root}"], ["4 image(s) without a label", f"{root}/train/masks"]),
        "bad label": ([f"data.root={root}"], ["masks/0.png contains values 9 that are neither a class nor ignore",
                                              "class indices 0..1 or 255"]),
        "too few": (["data.options={size: 4}"], ["4 images", "data.batch_size (2) x scaling.num_workers (2)"]),
    }[case]
    if case in ("image without label", "bad label"):
        folder_dataset(root, masks=case == "bad label", mask_value=9)
    if case in ("missing root", "image without label", "bad label"):
        overrides = ["data.dataset=folder", "data.options={}", "data.val_options={}", *overrides]
    code, _, err = run_cli_captured("search", ["--config", str(tiny_yaml), "--no-tune", *overrides], capsys)
    assert_user_error(code, err, *fragments)


def test_a_dataset_too_small_for_the_retrain_batch_is_refused(tiny_yaml: Path, capsys):
    code, _, err = run_cli_captured("retrain", ["--arch", "autodeeplab-S", "--config", str(tiny_yaml),
                                                "retrain.batch_size=16"], capsys)
    assert_user_error(code, err, "16 images", "retrain.batch_size (16) x retrain.num_workers (2)")


# ---------------------------------------------------------------------------------------------- genotype


GOOD = AUTODEEPLAB.to_dict()


@pytest.mark.parametrize("change, fragments", [
    ({"cell": [[["conv_7x7", 0], ["sep_conv_3x3", 1]]] + GOOD["cell"][1:]}, ["unknown op 'conv_7x7'",
                                                                           "expected one of"]),
    ({"path": [0, 2] + GOOD["path"][2:]}, ["layer 2: illegal transition from rate 4 to rate 16"]),
    ({"cell": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 0]]]}, ["block 0 has 3 inputs",
                                                                                   "expected exactly 2"]),
    ({"path": []}, ["genotype path is empty"]),
    ({"cell": [[["sep_conv_3x3", 3], ["sep_conv_3x3", 1]]]}, ["block 0: input 3 is out of range"]),
    ({"extra": 1}, ["expected an object with keys 'cell' and 'path'"]),
])
def test_bad_genotype_files_are_refused_by_the_retrain_cli(change, fragments, tiny_yaml: Path, tmp_path: Path,
                                                          capsys):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({**GOOD, **change}))
    code, _, err = run_cli_captured("retrain", ["--genotype", str(path), "--config", str(tiny_yaml)], capsys)
    assert_user_error(code, err, str(path), *fragments)


def test_unreadable_genotype_files_are_refused(tiny_yaml: Path, tmp_path: Path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"cell": [')
    code, _, err = run_cli_captured("retrain", ["--genotype", str(broken), "--config", str(tiny_yaml)], capsys)
    assert_user_error(code, err, f"{broken}: not valid JSON")
    missing = tmp_path / "missing.json"
    code, _, err = run_cli_captured("retrain", ["--genotype", str(missing), "--config", str(tiny_yaml)], capsys)
    assert_user_error(code, err, f"cannot read genotype file {missing}")


def test_a_bad_genotype_in_a_real_process_has_no_traceback(tiny_yaml: Path, tmp_path: Path):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({**GOOD, "path": [0, 0, 3] + GOOD["path"][3:]}))
    cmd = [sys.executable, "experiments/retrain.py", "--genotype", str(path), "--config", str(tiny_yaml)]
    proc = subprocess.run(cmd, cwd=ROOT, env=cluster_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "illegal transition from rate 4 to rate 32" in " ".join(proc.stderr.split())


# ---------------------------------------------------------------------------------------------- checkpoints


def fake_checkpoint(run: Path, epoch: int, meta: dict) -> None:
    directory = run / ckpt.checkpoint_dir_name(epoch)
    directory.mkdir(parents=True)
    ckpt.write_checkpoint_dir(directory, {"epoch": epoch, "w": torch.zeros(2)}, {"epoch": epoch, **meta})


def test_a_retrain_folder_of_another_genotype_is_refused(tiny_yaml: Path, tmp_path: Path, capsys):
    other = {**GOOD, "path": [0] * 12}
    fake_checkpoint(tmp_path / "runs" / "mine", 1, {"genotype": other})
    code, _, err = run_cli_captured("retrain", ["--arch", "autodeeplab-S", "--config", str(tiny_yaml), "--storage-path",
                                                str(tmp_path / "runs"), "--name", "mine"], capsys)
    assert_user_error(code, err, f"{tmp_path}/runs/mine holds a checkpoint (checkpoint_epoch0001)",
                      "not a retrain of this genotype", "Use another name (--name or name=...)")


@pytest.mark.cluster
def test_a_checkpoint_from_another_search_space_is_refused_by_the_cli(ray_session, tiny_yaml: Path, tmp_path: Path,
                                                                      capsys):
    space = {"layers": 5, "blocks": 2, "filter_multiplier": 2, "ops": "paper", "stem_channels": [8, 8, 16]}
    fake_checkpoint(tmp_path / "runs" / "old", 2, {"search_space": {**space, "num_classes": 8}})
    code, _, err = run_cli_captured("search", ["--config", str(tiny_yaml), "--no-tune", "--storage-path",
                                               str(tmp_path / "runs"), "--name", "old"], capsys)
    assert_user_error(code, err, f"{tmp_path}/runs/old holds a checkpoint (checkpoint_epoch0002)",
                      "different search space (layers: checkpoint 5, config 3)")
    assert not list((tmp_path / "runs" / "old").glob("checkpoint_manager_snapshot.json"))  # nothing started


# ---------------------------------------------------------------------------------------------- resources


@pytest.mark.cluster
@pytest.mark.parametrize("script, args, fragments", [
    ("search", ["--no-tune", "scaling.num_workers=9", "data.options={size: 64}"],
     ["scaling.num_workers=9", "Lower scaling.num_workers"]),
    ("search", ["--no-tune", "scaling.num_workers=1", "scaling.cpus_per_worker=3"],
     ["scaling.cpus_per_worker=3", "the largest node has CPU=2"]),
    ("retrain", ["--arch", "autodeeplab-S", "retrain.num_workers=9", "retrain.batch_size=1"],
     ["retrain.num_workers=9", "Lower retrain.num_workers"]),
])
def test_workers_the_cluster_cannot_hold_are_refused(ray_session, script, args, fragments, tiny_yaml: Path, capsys):
    code, _, err = run_cli_captured(script, ["--config", str(tiny_yaml), *args], capsys)
    assert_user_error(code, err, "needs CPU=", "Ray would otherwise wait forever", *fragments)


# ---------------------------------------------------------------------------------------------- sweeps


def started_sweep(path: Path, config: Path) -> None:
    """What a started sweep leaves before any trial: sweep.json and the config it was started with."""
    from orchestrator.sweep.tune_driver import write_sweep_file

    write_sweep_file(load_config(config), str(path), 1, "running")


@pytest.mark.cluster
def test_a_sweep_that_exists_is_not_silently_restarted(ray_session, tiny_yaml: Path, tmp_path: Path, capsys):
    started_sweep(tmp_path / "exp", tiny_yaml)
    code, _, err = run_cli_captured("search", ["--config", str(tiny_yaml), "--storage-path", str(tmp_path),
                                               "--name", "exp"], capsys)
    assert_user_error(code, err, f"a sweep already exists in {tmp_path}/exp", "'running'", "pass --resume")


@pytest.mark.cluster
def test_resuming_a_sweep_with_another_config_is_refused(ray_session, tiny_yaml: Path, tmp_path: Path, capsys):
    started_sweep(tmp_path / "exp", tiny_yaml)
    code, _, err = run_cli_captured("search", ["--config", str(tiny_yaml), "--storage-path", str(tmp_path),
                                               "--name", "exp", "--resume", "search.arch_lr=0.01"], capsys)
    old = config_hash(load_config(tiny_yaml))
    new = config_hash(with_overrides(load_config(tiny_yaml), ["search.arch_lr=0.01"]))
    assert_user_error(code, err, f"{tmp_path}/exp/sweep.json: the sweep was started with config hash {old}",
                      f"this config has {new}; differing keys: search.arch_lr (was 0.003, now 0.01). A resumed")


def test_resume_without_a_sweep_starts_one_and_says_so(tiny_yaml: Path, tmp_path: Path, capsys):
    from orchestrator.sweep.tune_driver import check_sweep_state

    cfg = load_config(tiny_yaml)
    assert check_sweep_state(cfg, str(tmp_path / "new"), resume=True) is False
    assert "--resume: no sweep at" in capsys.readouterr().out
    started_sweep(tmp_path / "new", tiny_yaml)
    assert check_sweep_state(cfg, str(tmp_path / "new"), resume=True) is True


def test_a_user_error_raised_in_a_train_worker_reaches_the_user_without_ray_wrapping():
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from orchestrator.cli import user_error

    cause = ckpt.CheckpointError("checkpoint /runs/x/checkpoint_epoch0002: state.pt is missing")
    assert user_error(WorkerGroupError("rank 0 failed", {1: RuntimeError("gloo"), 0: cause})) is cause
    wrapped = RayTaskError("train_fn", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    assert user_error(wrapped) is cause  # the original, whose text has no remote traceback
    assert user_error(WorkerGroupError("rank 0 failed", {0: RuntimeError("a bug")})) is None
