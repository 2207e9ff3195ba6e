"""A dataset root at a storage URI (orchestrator/data/remote.py), against the tests' local S3 server: one verified
copy per node, reused, copied again when the bucket changes; the up-front checks read the bucket's listing
without downloading images. No Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_data import build_cityscapes

from orchestrator.config import config_from_dict
from orchestrator.data import DataError, load_dataset
from orchestrator.data.preflight import check_data, check_retrain_data
from orchestrator.data.remote import CACHE_ENV, MANIFEST, cache_dir, local_root
from orchestrator.io import storage

RAW = [7, 8, 11, 26, 0]


def upload(folder: Path, uri: str) -> int:
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.write_bytes(storage.join(uri, str(path.relative_to(folder))), path.read_bytes())
            count += 1
    return count


@pytest.fixture
def bucket_dataset(s3_prefix, tmp_path_factory, monkeypatch):
    """A small Cityscapes tree in the bucket; the node cache in a folder of this test."""
    local, _ = build_cityscapes(tmp_path_factory.mktemp("cs"), 4, RAW)
    uri = storage.join(s3_prefix.uri, "cityscapes")
    files = upload(local, uri)
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return uri, local, files, cache


def test_a_uri_root_is_copied_once_verified_and_reused(bucket_dataset):
    uri, local, files, cache = bucket_dataset
    root = Path(local_root(uri))
    assert root == cache_dir(uri) and root.parent == cache
    copied = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert copied == sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) and len(copied) == files
    assert all((root / rel).read_bytes() == (local / rel).read_bytes() for rel in copied)
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest == {rel: (local / rel).stat().st_size for rel in copied}
    stamp = (root / MANIFEST).stat().st_mtime_ns
    assert local_root(uri) == str(root) and (root / MANIFEST).stat().st_mtime_ns == stamp  # reused, not copied
    ds = load_dataset("cityscapes", uri, "train", train=False, crop_size=32)
    assert len(ds) == 4 and str(ds.pairs[0][0]).startswith(str(root))
    assert not list(cache.glob(".*partial-*"))


def test_a_changed_bucket_is_copied_again_and_a_broken_copy_is_replaced(bucket_dataset):
    uri, local, _, _ = bucket_dataset
    root = Path(local_root(uri))
    extra = "leftImg8bit/train/aachen/aachen_000099_000019_leftImg8bit.png"
    storage.write_bytes(storage.join(uri, extra), (local / "leftImg8bit/train/aachen/aachen_000000_000019_"
                                                   "leftImg8bit.png").read_bytes())
    assert Path(local_root(uri)) == root and (root / extra).is_file()
    os.remove(root / MANIFEST)  # an interrupted or corrupted copy: no manifest
    (root / "stray.txt").write_text("left over")
    assert Path(local_root(uri)) == root and not (root / "stray.txt").exists()


def cityscapes_config(uri: str) -> object:
    return config_from_dict({"data": {"dataset": "cityscapes", "root": uri, "crop_size": 32, "batch_size": 1,
                                      "select_split": "holdout", "holdout": 1, "report_split": "val"},
                             "scaling": {"num_workers": 1},
                             "retrain": {"crop_size": 32, "batch_size": 1, "num_workers": 1}})


def test_the_up_front_checks_read_the_buckets_listing_without_downloading(bucket_dataset):
    uri, _, _, cache = bucket_dataset
    cfg = cityscapes_config(uri)
    check_data(cfg)
    check_retrain_data(cfg)
    assert not any(cache.iterdir())  # nothing was copied to check it
    storage.delete(storage.join(uri, "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png"))
    with pytest.raises(DataError, match="bremen_000001_000019_leftImg8bit.png"):
        check_data(cfg)


def test_an_empty_or_missing_bucket_folder_is_refused_with_the_uri_named(s3_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    missing = storage.join(s3_prefix.uri, "nothing-here")
    with pytest.raises(DataError, match="holds no files: expected the dataset's folders"):
        local_root(missing)
    with pytest.raises(DataError, match="nothing-here"):
        check_data(cityscapes_config(missing))
