"""Tests of the data layer: every on-disk format from tiny generated fixtures, the synthetic task, transforms,
search splits, loaders, and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from orchestrator.data import (
    DATASETS,
    DataError,
    InfiniteLoader,
    TrainTransform,
    denormalize,
    load_dataset,
    make_loader,
    search_splits,
)
from orchestrator.data.synthetic import CLASSES, MARKER_COOL, MARKER_WARM, generate
from orchestrator.data.transforms import to_tensors

H, W = 12, 20


# ---------------------------------------------------------------- fixtures in each exact on-disk format


def _pattern(values: list[int], shift: int) -> np.ndarray:
    """An H x W array cycling through ``values`` along diagonals, offset by ``shift``."""
    idx = (np.add.outer(np.arange(H), np.arange(W)) + shift) % len(values)
    return np.asarray(values)[idx]


def _rgb(shift: int) -> np.ndarray:
    return np.random.default_rng(shift).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _write(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    if palette:
        img.putpalette(_voc_palette())  # an "L" image becomes "P" with the same indices
    img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)
    return path


def _voc_palette() -> list[int]:
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def build_cityscapes(tmp: Path, n: int, raw: list[int]) -> tuple[Path, dict[Path, int]]:
    root, shifts = tmp / "cityscapes", {}
    for split, count, cities in (("train", n, ("aachen", "bremen")), ("val", 1, ("frankfurt",))):
        (root / "leftImg8bit" / split).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_000019"
            image = _write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(i))
            _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _pattern(raw, i))
            _write(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", _rgb(99))  # sibling, ignored
            shifts[image] = i
    return root, shifts


def build_voc(tmp: Path, n: int, raw: list[int]) -> tuple[Path, dict[Path, int]]:
    base, shifts = tmp / "VOCdevkit" / "VOC2012", {}
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    ids = {"train": [f"2007_{i:06d}" for i in range(n)], "val": ["2008_000001"]}
    ids["trainval"] = ids["train"] + ids["val"]
    for split, names in ids.items():
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    for k, name in enumerate(ids["trainval"]):
        image = _write(base / "JPEGImages" / f"{name}.jpg", _rgb(k))
        _write(base / "SegmentationClass" / f"{name}.png", _pattern(raw, k), palette=True)
        shifts[image] = k
    return tmp, shifts


def build_ade20k(tmp: Path, n: int, raw: list[int]) -> tuple[Path, dict[Path, int]]:
    base, shifts = tmp / "ADEChallengeData2016", {}
    for sub, tag, count in (("training", "train", n), ("validation", "val", 1)):
        (base / "images" / sub).mkdir(parents=True)
        (base / "annotations" / sub).mkdir(parents=True)
        for i in range(count):
            stem = f"ADE_{tag}_{i + 1:08d}"
            image = _write(base / "images" / sub / f"{stem}.jpg", _rgb(i))
            _write(base / "annotations" / sub / f"{stem}.png", _pattern(raw, i))
            shifts[image] = i
    rows = ["Idx,Ratio,Train,Val,Name", "1,0.1,1,1,wall", "2,0.1,1,1,building;edifice"]
    rows += [f"{i},0.0,1,1,thing{i};other" for i in range(3, 151)]
    (base / "objectInfo150.csv").write_text("\n".join(rows) + "\n")
    return tmp, shifts


def build_folder(tmp: Path, n: int, raw: list[int]) -> tuple[Path, dict[Path, int]]:
    root, shifts = tmp / "mine", {}
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    (root / "splits").mkdir()
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    stems = {"train": [f"img{i}" for i in range(n)], "val": ["v0"]}
    for split, names in stems.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
        for k, stem in enumerate(names):
            image = _write(root / "images" / f"{stem}.png", _rgb(k))
            _write(root / "masks" / f"{stem}.png", _pattern(raw, k))
            shifts[image] = k
    return root, shifts


FORMATS = {
    # name: (builder, stored label values, expected training ids, (class index, name) spot checks)
    "cityscapes": (build_cityscapes, [7, 8, 11, 26, 33, 0, 4, 30, 255], [0, 1, 2, 13, 18, 255, 255, 255, 255],
                   [(0, "road"), (13, "car"), (18, "bicycle")]),
    "voc": (build_voc, [0, 1, 15, 20, 255], [0, 1, 15, 20, 255], [(0, "background"), (15, "person")]),
    "ade20k": (build_ade20k, [0, 1, 2, 150, 75], [255, 0, 1, 149, 74], [(0, "wall"), (1, "building")]),
    "folder": (build_folder, [0, 1, 2, 255], [0, 1, 2, 255], [(0, "sky"), (2, "car")]),
}
NUM_CLASSES = {"cityscapes": 19, "voc": 21, "ade20k": 150, "folder": 3}


def test_every_file_format_has_a_fixture():
    assert set(FORMATS) == set(DATASETS) - {"synthetic"}


def _build(name: str, tmp: Path, n: int = 3) -> tuple[Path, dict[Path, int]]:
    builder, raw, _, _ = FORMATS[name]
    return builder(tmp, n, raw)


def _load(name: str, root: Path, split: str = "train", **kw):
    return load_dataset(name, root, split, train=False, crop_size=16, **kw)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_reads_classes_and_ignore(name, tmp_path):
    root, shifts = _build(name, tmp_path)
    _, _, expected, spot = FORMATS[name]
    ds = _load(name, root, check_samples=None)
    assert len(ds) == 3 and ds.num_classes == NUM_CLASSES[name] == len(ds.classes) and ds.ignore_index == 255
    for index, cls in spot:
        assert ds.classes[index] == cls
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, H, W)
        assert label.dtype == torch.int64
        np.testing.assert_array_equal(label.numpy(), _pattern(expected, shifts[ds.pairs[i][0]]))
        if ds.pairs[i][0].suffix == ".png":  # lossless: pixel values survive normalization exactly
            np.testing.assert_allclose(denormalize(image).permute(1, 2, 0).numpy() * 255,
                                       _rgb(shifts[ds.pairs[i][0]]), atol=1e-3)
    assert len(_load(name, root, "val")) == 1


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_training_transform(name, tmp_path):
    root, _ = _build(name, tmp_path)
    ds = load_dataset(name, root, "train", train=True, crop_size=16)
    _, _, expected, _ = FORMATS[name]
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 16, 16) and label.shape == (16, 16)
        assert set(label.unique().tolist()) <= set(expected) | {255}


def test_voc_labels_are_palette_indices(tmp_path):
    root, _ = _build("voc", tmp_path)
    ds = _load("voc", root)
    assert Image.open(ds.pairs[0][1]).mode == "P"
    assert _load("voc", root, "trainval").pairs[:3] == ds.pairs
    for sub in ("VOCdevkit", "VOCdevkit/VOC2012"):  # any of the usual roots works
        assert len(_load("voc", root / sub)) == 3


def test_ade20k_without_class_file_gets_generic_names(tmp_path):
    root, _ = _build("ade20k", tmp_path)
    (root / "ADEChallengeData2016" / "objectInfo150.csv").unlink()
    assert _load("ade20k", root).classes[:2] == ("class_1", "class_2")


def test_folder_split_subfolders_and_all(tmp_path):
    root, _ = _build("folder", tmp_path)
    assert len(_load("folder", root, "all")) == 4
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir()
    _write(root / "val" / "images" / "a.jpg", _rgb(0))
    _write(root / "val" / "masks" / "a.png", _pattern([0, 1], 0))
    assert [p[0].name for p in _load("folder", root, "val").pairs] == ["a.jpg"]


# ---------------------------------------------------------------- bad input, for every format


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_missing_root(name, tmp_path):
    with pytest.raises(DataError, match="needs a root"):
        _load(name, None)
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        _load(name, tmp_path / "nowhere")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_empty_split(name, tmp_path):
    root, _ = _build(name, tmp_path, n=0)
    with pytest.raises(DataError, match="empty"):
        _load(name, root)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_image_without_label(name, tmp_path):
    root, _ = _build(name, tmp_path)
    image, label = _load(name, root).pairs[1]
    label.unlink()
    with pytest.raises(DataError, match="no label|without a label") as err:
        _load(name, root)
    assert str(image) in str(err.value) and str(label) in str(err.value)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_label_without_image(name, tmp_path):
    root, _ = _build(name, tmp_path)
    image, label = _load(name, root).pairs[1]
    image.unlink()
    with pytest.raises(DataError, match="no image|without an image") as err:
        _load(name, root)
    assert str(label) in str(err.value)


def _corrupt(kind: str, image: Path, label: Path) -> Path:
    """Damage one pair; return the path the error must name."""
    if kind == "size":
        _write(label, np.zeros((H + 1, W), dtype=np.uint8))
        return label
    if kind == "value":
        _write(label, np.full((H, W), 254, dtype=np.uint8))
        return label
    if kind == "rgb_mask":
        _write(label, np.zeros((H, W, 3), dtype=np.uint8))
        return label
    if kind == "truncated_label":
        label.write_bytes(label.read_bytes()[: len(label.read_bytes()) // 2])
        return label
    if kind == "truncated_image":
        image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
        return image
    image.write_bytes(b"this is not an image")
    return image


BAD_FILES = {"size": "same width and height", "value": "neither a class nor ignore", "rgb_mask": "mode 'RGB'",
             "truncated_label": "cannot read label", "truncated_image": "cannot read image",
             "garbage_image": "cannot read image"}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_bad_file_is_caught_up_front_and_at_load(name, kind, tmp_path):
    root, _ = _build(name, tmp_path)
    image, label = _load(name, root).pairs[1]
    culprit = _corrupt(kind, image, label)
    with pytest.raises(DataError, match=BAD_FILES[kind]) as err:
        _load(name, root, check_samples=None)
    assert str(culprit) in str(err.value)
    ds = _load(name, root, check_samples=0)  # not checked up front: caught when loaded
    ds[0]
    with pytest.raises(DataError, match=BAD_FILES[kind]):
        ds[1]


def test_bad_file_in_a_worker_process_keeps_its_type(tmp_path):
    root, _ = _build("folder", tmp_path)
    image, label = _load("folder", root).pairs[0]
    _corrupt("value", image, label)
    loader = make_loader(_load("folder", root, check_samples=0), 1, shuffle=False, num_workers=1, seed=0,
                         drop_last=False)
    with pytest.raises(DataError, match=str(label)):
        next(iter(loader))


def test_bad_names_and_options(tmp_path):
    root, _ = _build("folder", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("coco", root, "train", train=True, crop_size=16)
    with pytest.raises(DataError, match="no split 'test'"):
        _load("folder", root, "test")
    with pytest.raises(DataError, match="no split 'trainval'"):
        _load("ade20k", root, "trainval")
    with pytest.raises(DataError, match="unknown option.*image_size"):
        _load("folder", root, image_size=32)
    with pytest.raises(DataError, match="unknown option.*colour"):
        load_dataset("synthetic", None, "train", train=True, crop_size=32, colour=1)
    with pytest.raises(DataError, match="scale_range"):
        load_dataset("synthetic", None, "train", train=True, crop_size=32, scale_range=(2.0, 1.0))
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        _load("folder", root)
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------- the synthetic task


def _synthetic(split: str = "train", train: bool = False, size: int = 8, image_size: int = 48, seed: int = 0):
    return load_dataset("synthetic", None, split, train=train, crop_size=image_size, seed=seed, size=size)


def test_synthetic_is_deterministic_per_seed_split_index():
    a, b = _synthetic(), _synthetic()
    for i in (5, 0, 3):  # order of access does not matter
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
    assert not torch.equal(a[0][0], _synthetic(seed=1)[0][0])
    assert not torch.equal(a[0][0], _synthetic("val")[0][0])
    assert not torch.equal(a[0][0], a[1][0])
    loader = make_loader(a, 4, shuffle=False, num_workers=2, seed=0, drop_last=False)
    images = torch.cat([batch[0] for batch in loader])
    torch.testing.assert_close(images, torch.stack([a[i][0] for i in range(len(a))]), rtol=0, atol=0)


def test_synthetic_covers_every_class():
    ds = _synthetic(size=24, image_size=96)
    present = np.zeros((len(ds), len(CLASSES)), dtype=bool)
    for i in range(len(ds)):
        present[i, ds[i][1].unique().numpy()] = True
    assert ds.classes == CLASSES and ds.num_classes == len(CLASSES) == 8
    assert present.mean(0).min() >= 0.5, present.mean(0)  # every class in most images, rare ones included
    weights = ds.class_weights(samples=8)
    assert weights.shape == (8,) and weights[CLASSES.index("dot")] > weights[CLASSES.index("background")]


def test_synthetic_markers_scale_with_the_image():
    """The context cue sits a fixed fraction of the side from a marker, so markers grow with the image too (a
    stride-32 map must be able to outline them at 128 px; experiments/studies/arch_sensitivity.py)."""
    fractions = []
    for size in (64, 128):
        labels = np.stack([generate(0, "train", i, size)[1] for i in range(16)])
        fractions.append(np.isin(labels, [MARKER_WARM, MARKER_COOL]).mean())
    assert 0.05 < fractions[0] < 0.25 and 0.7 < fractions[1] / fractions[0] < 1.4, fractions


def test_synthetic_shapes_and_sizes():
    ds = _synthetic("val", size=64, image_size=96)
    assert len(ds) == 64 and ds[0][0].shape == (3, 96, 96) and ds[0][1].shape == (96, 96)
    assert len(load_dataset("synthetic", None, "train", train=True, crop_size=64)) == 512
    crops = load_dataset("synthetic", None, "train", train=True, crop_size=64, image_size=96, size=2)
    assert crops[0][0].shape == (3, 64, 64)


# ---------------------------------------------------------------- transforms


def _coordinate_pair(h: int = 40, w: int = 56) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A float image whose channels encode (x, y) and a label of 6 px blocks."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([xx / w, yy / h, np.full_like(xx, 0.5)], axis=-1)
    label = ((yy // 6) * 7 + xx // 6).astype(np.int64) % 200
    return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label), label


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_and_label_aligned(seed):
    image, label, src = _coordinate_pair()
    h, w = src.shape
    torch.manual_seed(seed)
    out_image, out_label = TrainTransform(32)(image, label)
    assert out_image.shape == (3, 32, 32) and out_label.shape == (32, 32)
    padded = out_label.numpy() == 255
    assert (out_image[:, padded] == 0).all()  # image padding is the normalized mean, exactly where ignore is
    x = np.round(out_image[0].numpy() * w).astype(int)
    y = np.round(out_image[1].numpy() * h).astype(int)
    inside = ~padded & (x >= 1) & (x < w - 1) & (y >= 1) & (y < h - 1)
    checked = 0
    for r, c in zip(*np.nonzero(inside), strict=True):
        neighbourhood = src[y[r, c] - 1:y[r, c] + 2, x[r, c] - 1:x[r, c] + 2]
        if (neighbourhood == neighbourhood[0, 0]).all():  # away from block edges the label is unambiguous
            assert out_label[r, c] == src[y[r, c], x[r, c]]
            checked += 1
    assert checked >= 0.2 * (~padded).sum()


def test_train_transform_scales_flips_and_pads():
    image, label, _ = _coordinate_pair()
    scales, flips, pads = set(), set(), 0
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out_label = TrainTransform(32)(image, label)
        row = out_image[0, 16][out_label[16] != 255]
        if len(row) > 2:
            step = float(row[1] - row[0])
            flips.add(step < 0)
            scales.add(round(abs(step) * 56, 1))
        pads += int((out_label == 255).any())
    assert flips == {True, False} and len(scales) > 5 and pads > 0


@pytest.mark.parametrize("size,crop,scale_range", [((41, 67), 32, (0.5, 2.0)), ((40, 56), 32, (0.5, 0.5)),
                                                     ((64, 128), 48, (1.0, 1.0)), ((30, 30), 40, (0.7, 1.3))])
def test_fast_train_crop_equals_the_reference_transform(size, crop, scale_range):
    """`fast_crop.train_crop` on the decoded file == `TrainTransform` on the full normalized tensors with the
    same seed: labels exactly, images within uint8 rounding (half a level over the std)."""
    from orchestrator.data.common import identity_lut
    from orchestrator.data.fast_crop import train_crop

    rng = np.random.default_rng(sum(size))
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx * yy) % 256], -1).astype(np.uint8)
    rgb = np.clip(rgb.astype(int) + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    raw = rng.integers(0, 6, size).astype(np.uint8)
    raw[:3] = 255
    lut, transform = identity_lut(6), TrainTransform(crop, scale_range)
    for seed in range(8):
        torch.manual_seed(seed)
        fast_image, fast_label = train_crop(Image.fromarray(rgb), raw, lut, transform)
        torch.manual_seed(seed)
        ref_image, ref_label = transform(*to_tensors(rgb, lut[raw].astype(np.int64)))
        assert torch.equal(fast_label, ref_label)
        torch.testing.assert_close(fast_image, ref_image, rtol=0, atol=1.01 / 255 / 0.224)


def test_eval_transform_is_deterministic_and_keeps_the_full_image():
    ds = _synthetic("val", image_size=48)
    torch.testing.assert_close(ds[2], ds[2], rtol=0, atol=0)
    image, label = to_tensors(np.zeros((30, 50, 3), np.uint8), np.ones((30, 50), np.int64))
    from orchestrator.data import EvalTransform

    assert EvalTransform()(image, label)[0].shape == (3, 30, 50)
    cropped = EvalTransform(40)(image, label)
    assert cropped[0].shape == (3, 40, 40) and (cropped[1] == 255).sum() == 40 * 10


# ---------------------------------------------------------------- search splits


def test_search_splits_are_disjoint_covering_and_reproducible():
    ds = _synthetic(size=11)
    a, b = search_splits(ds, seed=3)
    assert set(a.indices).isdisjoint(b.indices) and sorted(a.indices + b.indices) == list(range(11))
    assert len(a) == 6 and len(b) == 5
    a2, b2 = search_splits(ds, seed=3)
    assert a.indices == a2.indices and b.indices == b2.indices
    assert search_splits(ds, seed=4)[0].indices != a.indices
    assert a.classes == ds.classes and b.num_classes == 8 and a.ignore_index == 255
    with pytest.raises(DataError, match="at least 2"):
        search_splits(_synthetic(size=1), seed=0)


# ---------------------------------------------------------------- loaders


def _batches(source, count: int) -> list[torch.Tensor]:
    return [source.next()[0] for _ in range(count)]


def test_make_loader_is_reproducible_with_workers():
    ds = _synthetic(train=True, size=6, image_size=32)
    ds.transform.scale_range = (0.5, 2.0)  # make augmentation visible
    first = [b[0] for b in make_loader(ds, 2, shuffle=True, num_workers=2, seed=7, drop_last=True)]
    again = [b[0] for b in make_loader(ds, 2, shuffle=True, num_workers=2, seed=7, drop_last=True)]
    other = [b[0] for b in make_loader(ds, 2, shuffle=True, num_workers=2, seed=8, drop_last=True)]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))
    with pytest.raises(DataError, match="fewer than batch_size"):
        make_loader(ds, 8, shuffle=True, num_workers=0, seed=0, drop_last=True)


def test_infinite_loader_runs_passes_and_resumes_exactly():
    ds = _synthetic(size=6, image_size=32)
    loader = make_loader(ds, 2, shuffle=True, num_workers=0, seed=1, drop_last=True)
    it = InfiniteLoader(loader)
    reference = _batches(it, 8)  # 3 batches a pass: ends inside the third pass
    assert it.state_dict()["epoch"] == 2 and it.state_dict()["batch"] == 2
    assert not all(torch.equal(x, y) for x, y in zip(reference[:3], reference[3:6], strict=True))

    first = InfiniteLoader(make_loader(ds, 2, shuffle=True, num_workers=0, seed=1, drop_last=True))
    _batches(first, 4)
    state = first.state_dict()
    resumed = InfiniteLoader(make_loader(ds, 2, shuffle=True, num_workers=0, seed=1, drop_last=True))
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(_batches(resumed, 4), reference[4:], strict=True))


def test_infinite_loader_with_workers_and_augmentation_resumes_exactly():
    ds = _synthetic(train=True, size=4, image_size=32)
    ds.transform.scale_range = (0.5, 2.0)

    def fresh() -> InfiniteLoader:
        return InfiniteLoader(make_loader(ds, 2, shuffle=True, num_workers=1, seed=5, drop_last=True))

    reference = _batches(fresh(), 5)
    first = fresh()
    _batches(first, 3)
    resumed = fresh()
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(_batches(resumed, 2), reference[3:], strict=True))


def test_infinite_loader_under_a_distributed_sampler():
    """What `prepare_data_loader` builds with 2 training workers: our generator and worker_init_fn, a
    DistributedSampler per rank. Ranks see disjoint images and every pass calls set_epoch."""
    ds = _synthetic(size=8, image_size=32)
    base = make_loader(ds, 2, shuffle=True, num_workers=0, seed=0, drop_last=False)
    seen = {}
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=base.num_workers,
                            worker_init_fn=base.worker_init_fn, generator=base.generator)
        it = InfiniteLoader(loader)
        _batches(it, 2)  # the whole of pass 0
        seen[rank] = list(sampler)
        _batches(it, 1)  # starts pass 1
        assert it.epoch == 1 and sampler.epoch == 1 and list(sampler) != seen[rank]
    assert set(seen[0]).isdisjoint(seen[1]) and len(seen[0]) == len(seen[1]) == 4


@pytest.mark.slow
@pytest.mark.cluster
def test_loader_under_ray_train_prepare_data_loader(ray_session, tmp_path):
    """Two Ray Train workers prepare our loader as the search does and draw across passes."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_fn() -> None:  # nested, so Ray pickles it by value (workers cannot import this test module)
        import ray.train
        import ray.train.torch

        from orchestrator.data import InfiniteLoader, load_dataset, make_loader

        ds = load_dataset("synthetic", None, "train", train=True, crop_size=32, size=8)
        loader = ray.train.torch.prepare_data_loader(make_loader(ds, 2, shuffle=True, num_workers=1, seed=0,
                                                                 drop_last=True))
        it = InfiniteLoader(loader)
        for _ in range(5):  # 4 images per rank, 2 batches a pass
            image, label = it.next()
        # Train V2 keeps reported metrics only with checkpoints, so check here: a failure fails fit().
        assert it.epoch == 2 and type(loader.sampler).__name__ == "DistributedSampler", (it.epoch, loader.sampler)
        assert image.shape == (2, 3, 32, 32) and label.shape == (2, 32, 32) and label.dtype == torch.int64

    trainer = TorchTrainer(train_fn, scaling_config=ScalingConfig(num_workers=2),
                           run_config=RunConfig(storage_path=str(tmp_path), name="data-loader"))
    trainer.fit()
