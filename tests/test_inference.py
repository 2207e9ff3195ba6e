"""Using a retrained network (`orchestrator.inference`, ``experiments/predict.py``, ``experiments/export.py``):
finding and loading a run in either folder form, predicting images of odd sizes (masks at the image's size,
palette PNGs, overlays, a legend), exporting to ONNX and TorchScript with dynamic sizes, and bad input reaching
the user as one ``error:`` paragraph with exit status 2.

Runs are faked: a tiny `DiscreteNet` (F = 2, stem 8/8/16, a path up to rate 32 and back) saved with the
project's checkpoint writer in a temporary experiment folder. No Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, run_cli_captured
from PIL import Image

from orchestrator.config import config_from_dict, config_to_dict
from orchestrator.data.formats import CITYSCAPES_CLASSES, VOC_CLASSES
from orchestrator.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from orchestrator.inference import InferenceError, dataset_classes, find_run_dir, load_run
from orchestrator.inference.export import FORMATS
from orchestrator.inference.predict import STRIDE, Padded, normalize, output_stems, palette, predict_mask
from orchestrator.inference.run import build_network, class_names
from orchestrator.io.checkpointing import FORMAT_VERSION, write_checkpoint_dir
from search_space import Genotype

GENOTYPE = Genotype.from_dict({"cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]],
                                        [["dil_conv_3x3", 1], ["avg_pool_3x3", 2]]],
                               "path": [1, 2, 3, 2]})
"""Two blocks; the path climbs to rate 32 (the largest stride) and comes back down (upsampling between cells)."""

IMAGES = [("photo.jpg", (61, 45)), ("scan.png", (100, 77)), ("square.png", (64, 64))]
"""(file name, (H, W)): a JPEG and PNGs, two of them at sizes that are not multiples of the stride."""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_settings) -> Path:
    """An experiment folder whose ``final/retrain`` holds two retrain checkpoints of a tiny network."""
    cfg = config_from_dict({**tiny_settings, "retrain": {"filter_multiplier": 2, "crop_size": 32}}, "test")
    exp = tmp_path_factory.mktemp("inference") / "exp"
    torch.manual_seed(0)
    net = build_network(cfg, GENOTYPE, len(SYNTHETIC_CLASSES))
    for epoch in (1, 2):
        folder = exp / "final" / "retrain" / f"checkpoint_epoch{epoch:04d}"
        folder.mkdir(parents=True)
        state = {"format_version": FORMAT_VERSION, "model": net.state_dict(), "genotype": GENOTYPE.to_dict(),
                 "config": config_to_dict(cfg), "epoch": epoch}
        write_checkpoint_dir(folder, state, {"epoch": epoch})
    (exp / "final" / "summary.json").write_text("{}")
    return exp


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in IMAGES:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image, and not listed: only image extensions are")
    return folder


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("where", ["", "final", "final/retrain"], ids=["experiment", "final", "run"])
def test_a_run_is_found_from_the_experiment_or_the_run_folder(experiment: Path, where: str):
    assert find_run_dir(experiment / where) == (experiment / "final" / "retrain").resolve()
    run = load_run(experiment / where)
    assert run.epoch == 2 and run.checkpoint.name == "checkpoint_epoch0002"
    assert run.classes == SYNTHETIC_CLASSES and run.genotype == GENOTYPE and not run.net.training


def test_a_run_on_s3_loads_the_same_network(experiment: Path, s3_prefix):
    from orchestrator.io import storage

    for f in (experiment / "final" / "retrain").rglob("*"):
        if f.is_file():
            rel = f.relative_to(experiment).as_posix()
            storage.write_bytes(storage.join(s3_prefix.uri, "exp", rel), f.read_bytes())
    remote = storage.join(s3_prefix.uri, "exp")
    assert find_run_dir(remote) == storage.join(remote, "final", "retrain")
    run, local = load_run(remote), load_run(experiment)
    assert run.checkpoint == storage.join(remote, "final", "retrain", "checkpoint_epoch0002") and run.epoch == 2
    theirs = local.net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in run.net.state_dict().items())
    with pytest.raises(InferenceError, match="does not exist"):
        find_run_dir(storage.join(s3_prefix.uri, "nothing"))


def test_the_network_is_built_as_the_retrain_loop_builds_it(experiment: Path):
    from orchestrator.train.retrain_loop import build_retrain_model  # imports Ray (does not start it)

    run = load_run(experiment)
    theirs = build_retrain_model(run.config, run.genotype, len(run.classes)).state_dict()
    ours = run.net.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("name, root, expected", [
    ("synthetic", None, SYNTHETIC_CLASSES),
    ("cityscapes", "/nowhere", CITYSCAPES_CLASSES),
    ("voc", None, VOC_CLASSES),
    ("ade20k", "/nowhere", tuple(f"class_{i}" for i in range(1, 151))),
    ("folder", "/nowhere", None),
    ("imagenet", None, None),
])
def test_class_names_come_from_the_dataset_name_without_its_files(name, root, expected):
    assert dataset_classes(name, root) == expected


def test_a_folder_datasets_names_come_from_its_classes_txt(tmp_path: Path, tiny_settings):
    (tmp_path / "classes.txt").write_text("sky\nroad\n\ncar\n")
    assert dataset_classes("folder", str(tmp_path)) == ("sky", "road", "car")
    cfg = config_from_dict(tiny_settings, "test")
    assert class_names(cfg, 3) == ("class_0", "class_1", "class_2")  # synthetic has 8: names cannot be told


# ---------------------------------------------------------------------------------------------- predicting


@pytest.mark.parametrize("size", [(61, 45), (100, 77), (33, 95), (64, 64), (1, 1)], ids=str)
def test_padded_network_gives_logits_at_the_input_size(experiment: Path, size):
    net = load_run(experiment).net
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = Padded(net)(x)
        assert logits.shape == (2, len(SYNTHETIC_CLASSES), *size)
        if size[0] % STRIDE == 0 and size[1] % STRIDE == 0:  # nothing to pad: the network itself
            torch.testing.assert_close(logits, net(x))


def test_an_image_at_stride_multiples_predicts_as_with_the_bare_network(experiment: Path):
    """Nothing to pad: the mask is the argmax of the network's own logits on the normalized image."""
    net = load_run(experiment).net
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    mask = predict_mask(Padded(net), image)
    with torch.no_grad():
        assert np.array_equal(mask, net(normalize(image))[0].argmax(0).numpy())


def test_the_palette_is_the_voc_colour_map():
    colours = palette(256)
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in colours}) == 256


def test_images_sharing_a_stem_get_distinct_outputs():
    assert output_stems([Path("a.jpg"), Path("a.png"), Path("b.png")]) == ["a_jpg", "a_png", "b"]


def _check_outputs(out: Path, names: list[str]) -> None:
    legend = json.loads((out / "legend.json").read_text())["classes"]
    assert [c["name"] for c in legend] == list(SYNTHETIC_CLASSES)
    assert [c["rgb"] for c in legend] == palette(len(SYNTHETIC_CLASSES)).tolist()
    assert Image.open(out / "legend.png").size[1] >= 20 * len(SYNTHETIC_CLASSES)
    sizes = dict(IMAGES)
    for name in names:
        h, w = sizes[name]
        stem = Path(name).stem
        with Image.open(out / f"{stem}.png") as mask, Image.open(out / f"{stem}_overlay.png") as over:
            assert mask.mode == "P" and mask.size == (w, h) and over.mode == "RGB" and over.size == (w, h)
            assert np.array(mask).max() < len(SYNTHETIC_CLASSES)
            assert mask.getpalette()[:3 * len(legend)] == [v for c in legend for v in c["rgb"]]
    records = json.loads((out / "predictions.json").read_text())["images"]
    assert sorted(Path(r["image"]).name for r in records) == sorted(names)


@pytest.mark.parametrize("form", ["files", "folder", "run folder"])
def test_predict_cli_writes_masks_overlays_and_a_legend(form, experiment: Path, image_dir: Path, tmp_path, capsys):
    names = [name for name, _ in IMAGES]
    images = [str(image_dir)] if form == "folder" else [str(image_dir / n) for n in names[:2]]
    run = experiment / "final" / "retrain" if form == "run folder" else experiment
    code, out, err = run_cli_captured("predict", ["--run", str(run), "--images", *images, "--out", str(tmp_path / "o"),
                                                  "--device", "cpu"], capsys)
    assert code == 0, err
    assert "checkpoint_epoch0002" in out
    _check_outputs(tmp_path / "o", names if form == "folder" else names[:2])


def test_the_overlay_blends_image_and_mask_colours(experiment: Path, image_dir: Path, tmp_path: Path, capsys):
    code, _, err = run_cli_captured("predict", ["--run", str(experiment), "--images", str(image_dir / "scan.png"),
                                                "--out", str(tmp_path), "--alpha", "0.25"], capsys)
    assert code == 0, err
    image = np.array(Image.open(image_dir / "scan.png"), dtype=np.float64)
    mask = np.array(Image.open(tmp_path / "scan.png"))
    expected = 0.75 * image + 0.25 * palette(len(SYNTHETIC_CLASSES))[mask]
    assert np.abs(np.array(Image.open(tmp_path / "scan_overlay.png")) - expected).max() <= 1


# ---------------------------------------------------------------------------------------------- exporting


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=pytest.mark.slow) if f == "onnx" else f for f in FORMATS])
def test_export_cli_matches_pytorch_at_two_sizes(fmt: str, experiment: Path, tmp_path: Path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = tmp_path / f"model.{fmt}"
    code, stdout, err = run_cli_captured("export", ["--run", str(experiment), "--format", fmt, "--out", str(out),
                                                    "--check-sizes", "61x45", "100x77"], capsys)
    assert code == 0, err
    info = json.loads(Path(f"{out}.json").read_text())
    assert [c["size"] for c in info["checks"]] == [[61, 45], [100, 77]]
    assert all(c["max_abs_diff"] <= 1e-3 for c in info["checks"]) and "check 100x77: max abs diff" in stdout
    assert [c["name"] for c in info["classes"]] == list(SYNTHETIC_CLASSES)
    x = torch.randn(1, 3, 70, 41)  # a third size and a batch of 1, on the file as a user loads it
    with torch.no_grad():
        expected = Padded(load_run(experiment).net)(x).numpy()
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(x).detach().numpy()
    else:
        import onnxruntime

        got = onnxruntime.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-3


# ---------------------------------------------------------------------------------------------- bad input


def _corrupt_run(tmp_path: Path, experiment: Path) -> Path:
    import shutil

    run = tmp_path / "corrupt"
    shutil.copytree(experiment / "final" / "retrain", run)
    with open(run / "checkpoint_epoch0002" / "state.pt", "r+b") as f:
        f.truncate(100)
    return run


@pytest.mark.parametrize("case, fragments", [
    ("not an image", ["cannot read image", "notes.txt", "expected a PNG/JPEG image"]),
    ("not a run", ["is not a retrain run", "checkpoint_epoch<k>", "experiment folder"]),
    ("missing run", ["does not exist", "expected a retrain run folder"]),
    ("no images in folder", ["holds no image"]),
    ("corrupt checkpoint", ["does not match the SHA-256", "truncated or corrupt"]),
    ("bad alpha", ["--alpha 2.0", "between 0 and 1"]),
])
def test_bad_input_is_one_error_paragraph_and_exit_2(case, fragments, experiment, image_dir, tmp_path, capsys):
    run, images, extra = str(experiment), [str(image_dir / "photo.jpg")], []
    if case == "not an image":
        images = [str(image_dir / "notes.txt")]
    elif case == "not a run":
        run = str(image_dir)
    elif case == "missing run":
        run = str(tmp_path / "nowhere")
    elif case == "no images in folder":
        (tmp_path / "empty").mkdir()
        images = [str(tmp_path / "empty")]
    elif case == "corrupt checkpoint":
        run = str(_corrupt_run(tmp_path, experiment))
    elif case == "bad alpha":
        extra = ["--alpha", "2"]
    code, _, err = run_cli_captured("predict", ["--run", run, "--images", *images, "--out", str(tmp_path / "o"),
                                                *extra], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def test_an_export_over_the_tolerance_fails_and_leaves_no_file(experiment: Path, tmp_path: Path, capsys):
    out = tmp_path / "model.pt"
    code, _, err = run_cli_captured("export", ["--run", str(experiment), "--format", "torchscript", "--out", str(out),
                                               "--tolerance", "-1"], capsys)
    assert code == 2 and err.startswith("error: TorchScript export") and "over the tolerance -1" in err, err
    assert not out.exists()


def test_a_non_run_folder_fails_the_export_cli_too(image_dir: Path, tmp_path: Path, capsys):
    code, _, err = run_cli_captured("export", ["--run", str(image_dir), "--format", "onnx", "--out",
                                               str(tmp_path / "m")], capsys)
    assert code == 2 and "is not a retrain run" in err and "Traceback" not in err, err


def test_using_a_network_imports_no_ray():
    """The layout test checks the package's own imports; this checks everything they pull in."""
    code = ("import sys, orchestrator.inference.export, orchestrator.inference.predict; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
