"""The bilevel search on Ray Train: metrics, checkpoints, exact resume, refusals; and its pieces without Ray.

The Ray tests share the session's Ray (conftest) and two module-scoped searches of the tiny supernet on 2 CPU
workers, 4 epochs with warmup 1 each: one straight, one through the CLI as 2 epochs, then the same command
again resuming to 4. Three Train runs in all (each ~30-60 s on a shared 2-core machine, mostly start-up).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FOUR_EPOCHS
from helpers import epochs_of, run_cli, run_cli_captured, tf_scalars, tfevents

from orchestrator.config import config_from_dict, with_overrides
from orchestrator.data import InfiniteLoader, load_dataset, make_loader
from orchestrator.io import checkpointing as ckpt
from orchestrator.train.metrics import confusion_matrix, iou_from_confusion
from orchestrator.train.resume import check_search_state
from orchestrator.train.search_loop import resume_loader
from orchestrator.train.search_setup import cosine_lr
from search_space import Genotype, SuperNet

RESERVED = {"pid", "hostname", "date", "time_this_iter_s", "time_total_s", "training_iteration", "timestamp",
            "trial_id", "experiment_id", "node_ip", "done", "config", "time_since_restore"}

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


# ---------------------------------------------------------------------------------------------- no Ray


def test_cosine_schedule_runs_from_lr_to_lr_min():
    assert cosine_lr(0, 100, 0.025, 0.001) == pytest.approx(0.025)
    assert cosine_lr(50, 100, 0.025, 0.001) == pytest.approx(0.013)
    assert cosine_lr(100, 100, 0.025, 0.001) == pytest.approx(0.001)
    lrs = [cosine_lr(s, 10, 0.025, 0.001) for s in range(11)]
    assert all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


def test_confusion_matrix_miou_ignores_the_ignore_label():
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 3], [2, 0, 1, 0]])
    cm = confusion_matrix(pred, target, num_classes=4)
    assert int(cm.sum()) == 6  # the two ignored pixels are not counted, whatever was predicted there
    per_class, miou = iou_from_confusion(cm)
    assert per_class[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(per_class[3])  # absent from labels and predictions: left out of the mean
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_checkpoint_round_trip_is_weights_only_and_hash_checked(tmp_path: Path):
    net = SuperNet(4, layers=2, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16))
    opt = torch.optim.Adam(net.arch_parameters(), lr=1e-3)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    state = {"model": net.state_dict(), "opt": opt.state_dict(), "rng": [ckpt.rng_state()], "config": {"a": [1]}}
    ckpt.write_checkpoint_dir(tmp_path, state, {"epoch": 1})
    back = ckpt.read_checkpoint_dir(tmp_path)  # torch.load(weights_only=True) inside
    assert torch.equal(back["model"]["alpha"], net.alpha.detach())
    assert back["opt"]["state"][0]["exp_avg"].shape == net.alpha.shape
    data = bytearray((tmp_path / ckpt.STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / ckpt.STATE_FILE).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="SHA-256"):
        ckpt.read_checkpoint_dir(tmp_path)


def test_rng_state_round_trip():
    import random

    import numpy as np

    saved = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(7)
    ckpt.set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_checkpoint_from_another_search_space_is_refused():
    space = {"layers": 3, "blocks": 2, "filter_multiplier": 2, "ops": "paper", "stem_channels": [8, 8, 16]}
    state = {"search_space": {**space, "num_classes": 8}}
    check_search_state(state, space, 8)
    with pytest.raises(ckpt.CheckpointError, match=r"different search space \(layers: checkpoint 3, config 4\)"):
        check_search_state(state, {**space, "layers": 4}, 8)
    with pytest.raises(ckpt.CheckpointError, match="ops: checkpoint 'paper', config 'darts'"):
        check_search_state(state, {**space, "ops": "darts"}, 8)
    with pytest.raises(ckpt.CheckpointError, match="num_classes"):
        check_search_state(state, space, 19)
    # A checkpoint from before search_space.head existed was made with the paper's head.
    check_search_state(state, {**space, "head": "aspp"}, 8)
    with pytest.raises(ckpt.CheckpointError, match="head: checkpoint 'aspp', config 'decoder'"):
        check_search_state(state, {**space, "head": "decoder"}, 8)


def test_resumed_loader_draws_what_the_uninterrupted_one_draws():
    """Augmentation draws from the global RNG; positioning a resumed loader must not shift that stream."""
    ds = load_dataset("synthetic", None, "train", train=True, crop_size=32, size=8, image_size=48,
                      scale_range=(0.5, 1.5))

    def loader() -> InfiniteLoader:
        return InfiniteLoader(make_loader(ds, 2, shuffle=True, num_workers=0, seed=3, drop_last=True))

    torch.manual_seed(1)
    straight = loader()
    for _ in range(3):
        straight.next()
    position, rng = straight.state_dict(), torch.get_rng_state()
    expected = [straight.next() for _ in range(3)]  # crosses into the next pass (4 batches per pass)
    torch.manual_seed(99)
    resumed = loader()
    resume_loader(resumed, position)
    torch.set_rng_state(rng)
    for (xa, ya), (xb, yb) in zip(expected, [resumed.next() for _ in range(3)], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_search_board_writes_the_epoch_into_its_event_file(tmp_path: Path):
    """Read back from the event file, as TensorBoard reads it: each scalar under its tag at the epoch (NaNs left
    out), the decoded genotype as text, the alpha and beta heatmaps, one truth|prediction image per preview."""
    from orchestrator.train.tb_logging import SearchBoard

    net = SuperNet(3, layers=2, blocks=2, filter_multiplier=2, stem_channels=(8, 8, 16))
    board = SearchBoard(tmp_path, ["a", "b", "c"])
    board.scalars(2, {"val_miou": 0.5, "train_loss": 1.25, "arch_loss": float("nan"), "lr": 0.02, "path_depth": 1,
                      "per_class_iou": [0.1, float("nan"), 0.3], "beta_entropy_per_layer": [0.5, 0.25],
                      "end_level_probs": [0.75, 0.125, 0.125, 0.0]})
    board.architecture(2, net.alpha, net.beta, net.genotype())
    board.predictions(2, torch.randn(2, 3, 32, 40), torch.randint(0, 3, (2, 32, 40)),
                      torch.randint(0, 3, (2, 32, 40)), 3)
    board.close()
    (events,) = tmp_path.glob("events.out.tfevents.*")
    expected = {"val/miou": 0.5, "loss/train": 1.25, "lr/weights": 0.02, "arch/path_depth": 1.0, "iou/a": 0.1,
                "iou/c": 0.3, "arch/beta_entropy_layer0": 0.5, "arch/beta_entropy_layer1": 0.25,
                "arch/end_level0": 0.75, "arch/end_level1": 0.125, "arch/end_level2": 0.125, "arch/end_level3": 0.0}
    assert tf_scalars(events) == {tag: {2: pytest.approx(value)} for tag, value in expected.items()}  # float32
    others = {v.tag: (e.step, v) for e in tfevents(events) for v in e.summary.value if v.tag not in expected}
    assert sorted(others) == ["arch/alpha", "arch/beta", "genotype/text_summary", "val/prediction_0",
                              "val/prediction_1"]
    assert {step for step, _ in others.values()} == {2}
    text = others["genotype/text_summary"][1].tensor.string_val[0].decode()
    assert net.genotype().to_json(indent=None) in text
    assert [(others[f"val/prediction_{i}"][1].image.height, others[f"val/prediction_{i}"][1].image.width)
            for i in (0, 1)] == [(32, 80), (32, 80)]  # ground truth beside prediction


def test_cli_refuses_an_unknown_key(tiny_settings, tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**tiny_settings, "search": {"epochs": 3, "warmupp_epochs": 1}}))
    code, _, err = run_cli_captured("search", ["--config", str(path), "--no-tune"], capsys)  # err: wrapping undone
    assert code == 2
    assert str(path) in err and "'search.warmupp_epochs'" in err and "did you mean 'search.warmup_epochs'" in err


# ---------------------------------------------------------------------------------------------- with Ray


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search-runs")


@pytest.fixture(scope="module")
def straight(straight_search: Path) -> Path:
    """4 epochs (warmup 1) on 2 CPU workers in one go (the session's `straight_search`); the run folder."""
    return straight_search


@pytest.fixture(scope="module")
def resumed(ray_session, tiny_settings, storage: Path) -> Path:
    """The same 4-epoch search through ``experiments/search.py --no-tune``: stopped after 2 epochs, then the
    same command again, which resumes the run of that name from its checkpoint."""
    path = storage / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_settings))
    command = ["--config", str(path), "--no-tune", "--storage-path", str(storage), "--name", "resumed", *FOUR_EPOCHS]
    assert run_cli("search", [*command, "--stop-at-epoch", "2"]) == 0
    assert [e["epoch"] for e in epochs_of(storage / "resumed")] == [1, 2]
    assert run_cli("search", command) == 0
    return storage / "resumed"


@pytest.mark.cluster
@pytest.mark.slow
def test_search_on_two_workers_reports_checkpoints_and_keeps_workers_in_sync(straight: Path):
    epochs = epochs_of(straight)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    for e in epochs:
        assert not RESERVED & set(e)
        assert 0.0 <= e["val_miou"] <= 1.0 and e["val_loss"] > 0 and e["train_loss"] > 0
        assert len(e["per_class_iou"]) == 8 and e["lr"] > 0 and e["images_per_second"] > 0
        assert e["sync_error"] == 0.0  # alpha, beta and weight checksums identical on both workers
        Genotype.from_json(e["genotype"])
        assert torch.tensor(e["alpha"]).shape == (5, 8) and torch.tensor(e["beta"]).shape == (3, 4, 3)
    assert epochs[0]["alpha_delta"] == 0.0 and epochs[0]["beta_delta"] == 0.0  # warmup: frozen
    assert not epochs[0]["arch_updates"] and math.isnan(epochs[0]["arch_loss"])
    for e in epochs[1:]:
        assert e["arch_updates"] and e["alpha_delta"] > 0 and e["beta_delta"] > 0 and e["arch_loss"] > 0
    assert epochs[0]["lr"] > epochs[1]["lr"] > epochs[2]["lr"] > epochs[3]["lr"]

    kept = sorted(p.name for p in straight.glob("checkpoint_epoch*"))
    assert kept == ["checkpoint_epoch0003", "checkpoint_epoch0004"]  # runtime.keep_checkpoints = 2
    state = ckpt.read_checkpoint_dir(straight / "checkpoint_epoch0004")
    assert state["epoch"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert torch.equal(state["model"]["alpha"], torch.tensor(epochs[-1]["alpha"]))
    assert config_from_dict(state["config"]).search.epochs == 4
    assert (straight / "config.yaml").is_file()
    board = tf_scalars(*(straight / "tensorboard").glob("events.out.tfevents.*"))  # float32: rel 1e-6
    assert board["val/miou"] == {e["epoch"]: pytest.approx(e["val_miou"], rel=1e-6) for e in epochs}
    assert board["loss/train"] == {e["epoch"]: pytest.approx(e["train_loss"], rel=1e-6) for e in epochs}


@pytest.mark.cluster
@pytest.mark.slow
def test_resume_equals_an_uninterrupted_search(straight: Path, resumed: Path):
    a = ckpt.read_checkpoint_dir(straight / "checkpoint_epoch0004")
    b = ckpt.read_checkpoint_dir(resumed / "checkpoint_epoch0004")
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(a["model"]["alpha"], torch.zeros_like(a["model"]["alpha"]))
    ea, eb = epochs_of(straight), epochs_of(resumed)
    assert [e["epoch"] for e in eb] == [1, 2, 3, 4]
    for x, y in zip(ea, eb, strict=True):
        assert x["val_miou"] == pytest.approx(y["val_miou"], abs=1e-6)
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["genotype"] == y["genotype"]


@pytest.mark.cluster
@pytest.mark.slow
def test_a_checkpoint_from_another_search_space_is_refused(straight: Path, tiny_settings):
    from orchestrator.train.trainers import run_single_search

    cfg = with_overrides(config_from_dict(tiny_settings), [*FOUR_EPOCHS, "search_space.layers=2"])
    with pytest.raises(ckpt.CheckpointError, match=r"different search space \(layers: checkpoint 3, config 2\)"):
        run_single_search(cfg, str(straight.parent), straight.name)
    manifest = json.loads((straight / "checkpoint_epoch0004" / ckpt.MANIFEST_FILE).read_text())
    assert manifest["search_space"]["layers"] == 3  # the run folder is untouched
