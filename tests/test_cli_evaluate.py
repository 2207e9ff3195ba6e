"""Scoring a retrained network (`orchestrator.inference.evaluate`, ``adl evaluate``): single- and multi-scale mIoU
and per-class IoU checked against a confusion matrix computed here, the multi-scale protocol against views
averaged by hand, the split a run is scored on, ``evaluation.json``, and the Cityscapes test-server files on a fake
Cityscapes tree. Runs are faked with `save_run` (a tiny untrained `DiscreteNet`). No Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli_captured
from PIL import Image
from torch.nn import functional as F

from orchestrator.config import config_from_dict, load_config
from orchestrator.data.formats import CITYSCAPES_TRAIN_IDS
from orchestrator.data.roles import role_dataset
from orchestrator.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from orchestrator.inference import load_run
from orchestrator.inference.evaluate import (
    EVAL_ROLES,
    SCALES,
    evaluate_run,
    multi_scale_logits,
    view_logits,
    write_test_server,
)
from orchestrator.inference.predict import Padded, predict
from orchestrator.inference.run import build_network, save_run
from search_space import Genotype

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread

ROOT = Path(__file__).resolve().parents[1]
GENOTYPE = Genotype.from_dict({"cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]],
                                        [["dil_conv_3x3", 1], ["avg_pool_3x3", 2]]],
                               "path": [0, 1, 2, 1]})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_settings) -> Path:
    """A retrain run folder of a tiny network on the synthetic task (report split: 8 test images of 32 px)."""
    cfg = config_from_dict({**tiny_settings, "retrain": {"filter_multiplier": 2, "crop_size": 32}}, "test")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("evaluate") / "run"
    save_run(folder, build_network(cfg, GENOTYPE, len(SYNTHETIC_CLASSES)), GENOTYPE, cfg, epoch=3)
    return folder


def own_confusion(run, dataset) -> np.ndarray:
    """The confusion matrix of the single-scale predictions, computed here without the module under test."""
    n, cm = len(run.classes), np.zeros((len(run.classes),) * 2, np.int64)
    with torch.no_grad():
        for i in range(len(dataset)):
            x, y = dataset[i]
            pred = Padded(run.net)(x[None])[0].argmax(0).numpy().ravel()
            y = y.numpy().ravel()
            for t, p in zip(y[y != 255], pred[y != 255], strict=True):
                cm[t, p] += 1
    assert cm.sum() and n == 8
    return cm


def test_single_scale_iou_is_that_of_a_confusion_matrix_computed_here(run_dir: Path):
    run = load_run(run_dir)
    result = evaluate_run(run, multi_scale=False)
    assert (result["split"], result["role"], result["images"]) == ("test", "report", 8)
    assert "multi_scale" not in result and result["classes"] == list(SYNTHETIC_CLASSES)
    cm = own_confusion(run, role_dataset(run.config.data, "report", train=False, crop_size=32))
    assert result["single_scale"]["confusion_matrix"] == cm.tolist()
    ious = []
    for c, name in enumerate(SYNTHETIC_CLASSES):
        union = cm[c, :].sum() + cm[:, c].sum() - cm[c, c]
        expected = cm[c, c] / union if union else None
        got = result["single_scale"]["per_class_iou"][name]
        assert got is None if expected is None else got == pytest.approx(expected, abs=1e-6), name
        ious += [] if expected is None else [expected]
    assert result["single_scale"]["miou"] == pytest.approx(np.mean(ious), abs=1e-6)
    assert result["single_scale"]["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)


def test_the_iou_convention_is_the_training_metrics_one(run_dir: Path):
    from orchestrator.train.metrics import iou_from_confusion

    result = evaluate_run(load_run(run_dir), multi_scale=False)["single_scale"]
    per_class, miou = iou_from_confusion(torch.tensor(result["confusion_matrix"]))
    assert result["miou"] == pytest.approx(miou, abs=1e-6)
    assert [v for v in result["per_class_iou"].values()] == [
        None if np.isnan(v) else pytest.approx(v, abs=1e-6) for v in per_class]


def test_multi_scale_with_one_unflipped_view_is_single_scale_exactly(run_dir: Path):
    run = load_run(run_dir)
    result = evaluate_run(run, scales=(1.0,), flip=False)
    single, multi = result["single_scale"], result["multi_scale"]
    assert multi["scales"] == [1.0] and multi["flip"] is False
    assert multi["confusion_matrix"] == single["confusion_matrix"] and multi["miou"] == single["miou"]
    x = torch.randn(1, 3, 45, 61)
    assert torch.equal(multi_scale_logits(Padded(run.net).eval(), x, (1.0,), False), Padded(run.net)(x))


def test_the_multi_scale_protocol_averages_resized_and_flipped_views(run_dir: Path):
    net = Padded(load_run(run_dir).net).eval()
    x = torch.randn(1, 3, 40, 52)
    expected = 0
    with torch.no_grad():
        for scale in (0.5, 1.5):
            size = (round(40 * scale), round(52 * scale))
            view = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flip in (False, True):
                logits = net(view.flip(-1)).flip(-1) if flip else net(view)
                expected = expected + F.interpolate(logits, size=(40, 52), mode="bilinear", align_corners=False)
    torch.testing.assert_close(multi_scale_logits(net, x, (0.5, 1.5), True), expected / 4)
    assert view_logits(net, x, 1.75).shape == (1, 8, 40, 52)


def test_the_full_protocol_scores_every_pixel_once(run_dir: Path):
    result = evaluate_run(load_run(run_dir), limit=3)
    assert result["images"] == 3 and result["multi_scale"]["scales"] == list(SCALES)
    single, multi = (np.array(result[k]["confusion_matrix"]) for k in ("single_scale", "multi_scale"))
    assert (single.sum(1) == multi.sum(1)).all()  # the same labelled pixels, other predictions


@pytest.mark.parametrize("kwargs, split, role", [
    ({}, "test", "report"), ({"role": "select"}, "val", "select"), ({"split": "val"}, "val", None),
    ({"split": "test"}, "test", "report"),
])
def test_the_split_follows_the_role_or_the_name(run_dir: Path, kwargs, split, role):
    result = evaluate_run(load_run(run_dir), multi_scale=False, limit=1, **kwargs)
    assert (result["split"], result["role"]) == (split, role)
    assert EVAL_ROLES == ("select", "report")


def test_the_cli_writes_evaluation_json_and_prints_the_table(run_dir: Path, tmp_path: Path, capsys):
    code, out, err = run_cli_captured("evaluate", ["--experiment", str(run_dir), "--out", str(tmp_path),
                                                   "--scales", "0.75,1.25", "--limit", "2", "--device", "cpu"],
                                      capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["multi_scale"]["scales"] == [0.75, 1.25] and saved["images"] == 2 and saved["epoch"] == 3
    assert "single-scale" in out and "multi-scale" in out and "mIoU" in out and "evaluation.json" in out
    code, _, err = run_cli_captured("evaluate", ["--run", str(run_dir), "--single-scale", "--limit", "1"], capsys)
    assert code == 0, err
    assert "multi_scale" not in json.loads((run_dir / "evaluation.json").read_text())  # default: the run folder


# ---------------------------------------------------------------------------------------------- test server


def fake_cityscapes(root: Path) -> list[Path]:
    """Cityscapes ``leftImg8bit/test`` images (no labels: the test split's are private)."""
    rng, images = np.random.default_rng(0), []
    for city, frame, size in (("berlin", 19, (40, 72)), ("berlin", 20, (33, 64)), ("bonn", 7, (48, 48))):
        path = root / "leftImg8bit" / "test" / city / f"{city}_000000_{frame:06d}_leftImg8bit.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return images


@pytest.fixture(scope="module")
def cityscapes_run(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("cityscapes")
    images = fake_cityscapes(root)
    cfg = load_config(ROOT / "experiments" / "configs" / "cityscapes.yaml",
                      [f"data.root={root}", "retrain.filter_multiplier=2", "search_space.stem_channels=[8, 8, 16]"])
    torch.manual_seed(0)
    folder = root.parent / "cityscapes-run"
    save_run(folder, build_network(cfg, GENOTYPE, 19), GENOTYPE, cfg)
    return folder, images


def test_test_server_files_are_label_ids_named_as_the_images(cityscapes_run, tmp_path: Path):
    folder, images = cityscapes_run
    run = load_run(folder)
    written = write_test_server(run, tmp_path / "server")
    assert sorted(Path(p).name for p in written) == sorted(p.name for p in images)
    for image in images:
        with Image.open(tmp_path / "server" / image.name) as png:
            assert png.mode == "L" and png.size == Image.open(image).size
            ids = np.array(png)
        assert np.array_equal(ids, np.array(CITYSCAPES_TRAIN_IDS, np.uint8)[predict(run, image)])


def test_the_test_server_cli_and_its_refusals(cityscapes_run, run_dir: Path, tmp_path: Path, capsys):
    folder, images = cityscapes_run
    code, out, err = run_cli_captured("evaluate", ["--experiment", str(folder), "--test-server", str(tmp_path / "s"),
                                                   "--limit", "1", "--multi-scale-test", "--scales", "1,1.5"], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "s").iterdir()] == [images[0].name] and "1 labelId PNG(s)" in out
    code, _, err = run_cli_captured("evaluate", ["--experiment", str(run_dir), "--test-server", str(tmp_path / "t")],
                                    capsys)
    assert code == 2 and err.startswith("error: test-server files are Cityscapes labelIds") and "synthetic" in err
    code, _, err = run_cli_captured("evaluate", ["--experiment", str(folder), "--test-server", str(tmp_path / "u"),
                                                 "--split", "val"], capsys)
    assert code == 2 and "leftImg8bit/val holds no <city>/*_leftImg8bit.png images" in err, err
