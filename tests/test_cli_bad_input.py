"""Storage and output paths a command cannot use, refused before anything starts: every entry point against an
object store nothing answers for (an S3 endpoint on a closed local port) and against outputs that cannot be
written (a folder under a file, a folder that cannot be made, a folder where a file belongs).

Each must end in one ``error: ...`` paragraph naming the value, exit status 2, no traceback, within seconds
(`orchestrator.io.storage.check_writable` probes the endpoint instead of waiting out pyarrow's retries), and
without Ray: the checks come before `connect_ray`, which these tests replace by a failure.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, free_port, run_cli_captured

from orchestrator.config import config_from_dict
from orchestrator.inference.run import build_network, save_run
from orchestrator.io import storage
from orchestrator.io.storage import StorageError, check_writable
from search_space import Genotype

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


@pytest.fixture
def closed_s3() -> str:
    """An S3 URI whose endpoint is a local port nothing listens on."""
    return f"s3://no-such-bucket/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http"


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Connecting to Ray fails the test: every refusal here must come before it."""
    def refuse(address=None):
        raise AssertionError("connect_ray was called: the check must come before Ray")

    for module in ("orchestrator.cli", "orchestrator.commands.search", "orchestrator.commands.retrain",
                   "orchestrator.commands.validate"):
        monkeypatch.setattr(f"{module}.connect_ray", refuse)


@pytest.fixture
def tiny_yaml(tiny_settings, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_settings, "storage_path": str(tmp_path / "results"),
                                    "retrain": {"epochs": 1, "crop_size": 32, "batch_size": 2,
                                                "filter_multiplier": 2, "num_workers": 2}}))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_settings) -> Path:
    cfg = config_from_dict({**tiny_settings, "retrain": {"filter_multiplier": 2, "crop_size": 32}}, "test")
    genotype = Genotype.from_dict({"cell": [[["sep_conv_3x3", 0], ["skip_connect", 1]],
                                            [["dil_conv_3x3", 1], ["avg_pool_3x3", 2]]], "path": [0, 1, 2, 1]})
    folder = tmp_path_factory.mktemp("bad-output") / "run"
    save_run(folder, build_network(cfg, genotype, 8), genotype, cfg)
    return folder


def assert_refused(result, *fragments: str, seconds: float | None = None) -> None:
    code, _, err = result
    assert code == 2, err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def timed(script: str, args: list[str], capsys):
    start = time.time()
    result = run_cli_captured(script, args, capsys)
    assert time.time() - start < 10 + storage.PROBE_TIMEOUT_S, "the check should not wait for pyarrow's retries"
    return result


# ---------------------------------------------------------------------------------------------- unreachable storage


def test_search_refuses_unreachable_storage(tiny_yaml: Path, closed_s3: str, capsys):
    result = timed("search", ["--config", str(tiny_yaml), "--storage-path", closed_s3], capsys)
    assert_refused(result, f"--storage-path {closed_s3} is not reachable", "nothing answers at 127.0.0.1:")


def test_search_refuses_the_configs_unreachable_storage_path(tiny_yaml: Path, closed_s3: str, capsys):
    result = timed("search", ["--config", str(tiny_yaml), "--no-tune", f"storage_path={closed_s3}"], capsys)
    assert_refused(result, f"storage_path (from the config) {closed_s3} is not reachable")


def test_retrain_refuses_unreachable_storage(tiny_yaml: Path, closed_s3: str, capsys):
    result = timed("retrain", ["--arch", "autodeeplab-S", "--config", str(tiny_yaml), "--storage-path", closed_s3],
                   capsys)
    assert_refused(result, f"--storage-path {closed_s3} is not reachable")


def test_validate_refuses_unreachable_outputs_and_experiments(tiny_yaml: Path, closed_s3: str, tmp_path: Path,
                                                             capsys):
    result = timed("validate", ["--config", str(tiny_yaml), "--out", closed_s3, "--search-seeds", "0"], capsys)
    assert_refused(result, f"--out {closed_s3} is not reachable")
    assert_refused(timed("validate", ["--experiment", closed_s3], capsys), f"--experiment {closed_s3} is not reachable")
    (tmp_path / "exp").mkdir()
    result = timed("validate", ["--experiment", str(tmp_path / "exp"), "--runs", closed_s3], capsys)
    assert_refused(result, f"--runs {closed_s3} is not reachable")


def test_a_real_process_ends_in_one_paragraph_within_seconds(tiny_yaml: Path, closed_s3: str):
    start = time.time()
    proc = subprocess.run([sys.executable, "experiments/search.py", "--config", str(tiny_yaml), "--storage-path",
                           closed_s3], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr and closed_s3 in proc.stderr
    assert time.time() - start < 60


# ---------------------------------------------------------------------------------------------- outputs


def test_export_refuses_a_folder_that_cannot_be_made(run_dir: Path, tmp_path: Path, capsys):
    result = run_cli_captured("export", ["--run", str(run_dir), "--format", "torchscript", "--out",
                                         "/proc/nope/model.onnx"], capsys)
    assert_refused(result, "--out-file /proc/nope/model.onnx: cannot create the folder /proc/nope")


def test_export_refuses_a_folder_for_the_file(run_dir: Path, tmp_path: Path, capsys):
    result = run_cli_captured("export", ["--experiment", str(run_dir), "--format", "torchscript", "--out-file",
                                         str(tmp_path)], capsys)
    assert_refused(result, f"--out-file {tmp_path} is a folder: expected the name of a file")


@pytest.mark.parametrize("script, args", [
    ("predict", ["--images", "IMAGE", "--out", "BAD"]),
    ("evaluate", ["--out", "BAD"]),
    ("evaluate", ["--test-server", "BAD"]),
])
def test_no_run_command_writes_under_a_file(script, args, run_dir: Path, tmp_path: Path, capsys):
    from PIL import Image

    (tmp_path / "file").write_text("a file, not a folder")
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    bad = str(tmp_path / "file" / "sub")
    args = [str(tmp_path / "a.png") if a == "IMAGE" else bad if a == "BAD" else a for a in args]
    option = args[args.index(bad) - 1]
    result = run_cli_captured(script, ["--experiment", str(run_dir), *args], capsys)
    assert_refused(result, f"{option} {bad}: cannot create the folder {bad}", "Not a directory")


def test_search_refuses_a_storage_path_that_is_a_file(tiny_yaml: Path, tmp_path: Path, capsys):
    (tmp_path / "taken").write_text("")
    result = run_cli_captured("search", ["--config", str(tiny_yaml), "--storage-path", str(tmp_path / "taken")],
                              capsys)
    assert_refused(result, f"--storage-path {tmp_path / 'taken'} is a file: expected a folder")


# ---------------------------------------------------------------------------------------------- the check


def test_the_check_passes_writable_places_and_creates_local_folders(tmp_path: Path):
    check_writable(tmp_path / "new" / "deeper")
    check_writable(tmp_path / "out" / "model.pt", file=True)
    assert (tmp_path / "new" / "deeper").is_dir() and (tmp_path / "out").is_dir()
    assert not (tmp_path / "out" / "model.pt").exists()
    with pytest.raises(StorageError, match="looks like a URI that lost its '//'"):
        check_writable("s3:/bucket/x")


def test_the_check_writes_and_removes_a_probe_on_a_reachable_store(s3_prefix):
    check_writable(storage.join(s3_prefix.uri, "runs"))
    assert storage.files_under(storage.join(s3_prefix.uri, "runs")) == []


