"""The storage layer (`orchestrator.io.storage`) on local folders and on a real S3-protocol server (moto, started
once per session by the ``s3_server`` fixture, no Ray): joining names onto paths and URIs, whole-file round trips,
listings, the per-epoch records on S3, and the guard that keeps a URI from ever becoming a local folder.

Every S3 test runs twice: with the endpoint in the URI's query (``?endpoint_override=...&scheme=http``, and no
``AWS_ENDPOINT_URL``), and as a plain ``s3://bucket/prefix`` with ``AWS_ENDPOINT_URL`` set. Each runs in an
empty working directory that must stay empty.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from helpers import PNG, figure

from orchestrator.io import atomic, storage
from orchestrator.io.records import RECORDS_FILE, read_records, read_table, write_record

# ------------------------------------------------------------------------------------------------- local


def test_join_on_a_local_path_is_os_path_join():
    assert storage.join("/exp", "records", "t1") == "/exp/records/t1"
    assert storage.join(Path("/exp"), "a/b/", "/c", "") == "/exp/a/b/c"
    assert storage.join("rel", "x.json") == os.path.join("rel", "x.json")


@pytest.mark.parametrize("base, names, joined", [
    ("s3://b/runs?endpoint_override=127.0.0.1:5055&scheme=http", ("exp", "records.parquet"),
     "s3://b/runs/exp/records.parquet?endpoint_override=127.0.0.1:5055&scheme=http"),
    ("s3://b/runs/?region=us-east-1", ("exp/", "/a/b"), "s3://b/runs/exp/a/b?region=us-east-1"),
    ("s3://b/runs/", ("exp",), "s3://b/runs/exp"),
    ("s3://b", ("exp",), "s3://b/exp"),
    ("s3://b?scheme=http", ("exp",), "s3://b/exp?scheme=http"),
    ("gs://b/p", ("x y", "a?b#c"), "gs://b/p/x%20y/a%3Fb%23c"),
    ("file:///tmp/r", ("x",), "file:///tmp/r/x"),
])
def test_join_on_a_uri_puts_names_on_its_path_before_the_query(base, names, joined):
    assert storage.join(base, *names) == joined


def test_a_local_path_and_a_file_uri_resolve_to_the_local_filesystem(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, inner = storage.resolve("rel/x")
    assert isinstance(fs, pafs.LocalFileSystem) and inner == str(tmp_path / "rel" / "x")
    assert storage.resolve(f"file://{tmp_path}/a%20b") == (fs, f"{tmp_path}/a b")
    assert storage.local_path(f"file://{tmp_path}/y") == f"{tmp_path}/y"
    assert storage.local_path("s3://b/k") is None


MANGLED = [str(Path("s3://bucket/runs/exp")), "gs:/bucket/x", "s3:"]
"""URIs after `pathlib` collapsed their ``//``: ``s3:/bucket/runs/exp``."""


@pytest.mark.parametrize("path", MANGLED)
def test_a_mangled_uri_never_becomes_a_local_folder(path: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: storage.join(path, "x"), lambda: storage.write_bytes(path, b"x"),
                 lambda: atomic.write_json(Path(path, "a.json"), {}), lambda: storage.makedirs(path),
                 lambda: storage.exists(path), lambda: storage.list_dir(path), lambda: storage.resolve(path),
                 lambda: write_record(path, "t1", {}, {"epoch": 1})):
        with pytest.raises(ValueError, match="looks like a URI"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_local_round_trips_and_listings(tmp_path: Path):
    base = str(tmp_path / "exp")
    assert storage.write_bytes(storage.join(base, "a.bin"), b"\x00\x01") == tmp_path / "exp" / "a.bin"
    storage.write_text(storage.join(base, "t", "b.txt"), "héllo")
    storage.write_json(storage.join(base, "t", "c.json"), {"x": [1, 2], "p": Path("/q")})
    storage.save_figure(figure(), storage.join(base, "t", "d.png"))
    assert storage.read_bytes(storage.join(base, "a.bin")) == b"\x00\x01"
    assert storage.read_text(storage.join(base, "t", "b.txt")) == "héllo"
    assert storage.read_json(storage.join(base, "t", "c.json")) == {"x": [1, 2], "p": "/q"}
    assert storage.read_text(storage.join(base, "t", "c.json")).endswith("}\n")
    assert storage.read_bytes(storage.join(base, "t", "d.png")).startswith(PNG)
    assert storage.list_dir(base) == ["a.bin", "t"]
    assert storage.list_dir(storage.join(base, "missing")) == []
    assert storage.glob(base, "t/*.json") == [storage.join(base, "t", "c.json")]
    assert storage.glob(base, "*/*.txt") == [storage.join(base, "t", "b.txt")]
    assert storage.glob(base, "*.txt") == []
    assert storage.is_dir(storage.join(base, "t")) and storage.is_file(storage.join(base, "a.bin"))
    assert not storage.exists(storage.join(base, "nope"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "nope"))
    storage.makedirs(storage.join(base, "e", "f"))
    assert (tmp_path / "exp" / "e" / "f").is_dir()


def test_a_local_write_is_a_temp_file_renamed_over_the_destination(tmp_path: Path, monkeypatch):
    renames = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), replace(src, dst))[1])
    dest = tmp_path / "out.json"
    atomic.write_json(dest, {"a": 1})
    [(src, dst)] = renames
    assert Path(dst) == dest and Path(src).parent == tmp_path
    assert Path(src).name.startswith(".out.json.") and src.endswith(".tmp")
    assert os.stat(dest).st_mode & 0o777 == 0o666 & ~storage._UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_names_are_the_storage_functions():
    for name in ("write_bytes", "write_text", "write_json", "save_figure"):
        assert getattr(atomic, name) is getattr(storage, name)


# ---------------------------------------------------------------------------------------------------- S3


@pytest.fixture
def s3(s3_prefix):
    return s3_prefix


def test_s3_round_trips_and_listings(s3):
    base = s3.uri
    assert storage.write_bytes(storage.join(base, "a.bin"), b"\x00\x01") == storage.join(base, "a.bin")
    atomic.write_text(storage.join(base, "t", "b.txt"), "héllo")
    atomic.write_json(storage.join(base, "t", "c.json"), {"x": [1, 2]})
    atomic.save_figure(figure(), storage.join(base, "t", "d.png"))
    storage.write_text(storage.join(base, "t", "deep", "e.txt"), "e")
    storage.write_text(storage.join(base, "x y", "f.txt"), "space")
    assert storage.read_bytes(storage.join(base, "a.bin")) == b"\x00\x01"
    assert storage.read_text(storage.join(base, "t", "b.txt")) == "héllo"
    assert storage.read_json(storage.join(base, "t", "c.json")) == {"x": [1, 2]}
    assert storage.read_bytes(storage.join(base, "t", "d.png")).startswith(PNG)
    assert storage.read_text(storage.join(base, "x y", "f.txt")) == "space"
    assert storage.list_dir(base) == ["a.bin", "t", "x y"]
    assert storage.list_dir(storage.join(base, "t")) == ["b.txt", "c.json", "d.png", "deep"]
    assert storage.list_dir(storage.join(base, "missing")) == []
    assert storage.glob(base, "*/*.txt") == [storage.join(base, "t", "b.txt"), storage.join(base, "x y", "f.txt")]
    assert storage.glob(storage.join(base, "t"), "*.json") == [storage.join(base, "t", "c.json")]
    assert storage.is_dir(storage.join(base, "t")) and storage.is_file(storage.join(base, "t", "b.txt"))
    assert storage.exists(storage.join(base, "a.bin")) and not storage.exists(storage.join(base, "nope"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "nope"))
    storage.makedirs(storage.join(base, "empty", "folder"))  # no-op: folders are key prefixes
    names = ["a.bin", "t/b.txt", "t/c.json", "t/d.png", "t/deep/e.txt", "x y/f.txt"]
    assert s3.server.keys(s3.prefix) == [f"{s3.prefix}/{n}" for n in names]  # no query text in any key


def test_s3_filesystems_are_built_once_per_bucket_and_query(s3):
    fs, inner = storage.resolve(storage.join(s3.uri, "a", "b.json"))
    assert isinstance(fs, pafs.S3FileSystem) and inner == f"adl-test/{s3.prefix}/a/b.json"
    again, _ = storage.resolve(storage.join(s3.uri, "c"))
    assert again is fs
    other = s3.uri + "&region=us-east-1" if s3.form == "query" else s3.server.uri(s3.prefix)
    assert storage.resolve(other)[0] is not fs  # another query, another client (it may hold other options)


def test_records_on_s3(s3):
    exp = storage.join(s3.uri, "exp")
    write_record(exp, "t2", {"lr": 0.1}, {"epoch": 1, "val_miou": 0.2})
    write_record(exp, "t1", {"lr": 0.2}, {"epoch": 2, "val_miou": 0.3})
    write_record(exp, "t1", {"lr": 0.2}, {"epoch": 1, "val_miou": 0.1})
    written = write_record(exp, "t1", {"lr": 0.2}, {"epoch": 2, "val_miou": 0.4})  # a resumed trial: replaced
    assert written == storage.join(exp, RECORDS_FILE)
    table = read_records(exp)
    assert [(r["trial_id"], r["epoch"], r["val_miou"], r["config/lr"]) for r in table.to_pylist()] == [
        ("t1", 1, 0.1, 0.2), ("t1", 2, 0.4, 0.2), ("t2", 1, 0.2, 0.1)]
    assert read_table(written).to_pylist() == table.to_pylist()
    records = [f"records/t1/epoch-0000{k}.parquet" for k in (1, 2)] + ["records/t2/epoch-00001.parquet"]
    assert s3.server.keys(f"{s3.prefix}/exp/") == sorted(f"{s3.prefix}/exp/{n}" for n in [RECORDS_FILE, *records])
