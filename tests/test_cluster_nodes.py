"""cluster.yaml's nodes: the torch every node installs is the Makefile's, token authentication is on for every
`ray start` with a token that never enters the repository, and the spot type offers what search workers ask for.
Offline: the file is read, nothing is launched."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from orchestrator.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_every_node_installs_the_torch_the_makefile_pins():
    pinned = re.search(r"^TORCH_SPEC \?= (torch==\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    installs = [c for c in CLUSTER["setup_commands"] if re.search(r"pip install .*\btorch\b", c)]
    assert installs and all(pinned in c for c in installs), installs


def test_every_ray_start_uses_token_authentication_with_the_mounted_token():
    starts = [c for c in CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"] if "ray start" in c]
    paths = {re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", c).group(1) for c in starts if "RAY_AUTH_MODE=token" in c}
    assert len(starts) == 2 and len(paths) == 1, starts
    token = paths.pop()
    source = CLUSTER["file_mounts"][token]
    assert source.startswith("~/") and not (ROOT / source.removeprefix("~/")).exists()  # outside the repository


def test_the_search_workers_custom_resource_is_offered_by_the_spot_type_only():
    wanted = load_config(str(ROOT / "experiments" / "configs" / "cityscapes.yaml")).scaling.custom_resources
    types = CLUSTER["available_node_types"]
    offering = [name for name, body in types.items() if all(k in body.get("resources", {}) for k in wanted)]
    assert wanted and offering == ["gpu_1x"]
    assert types["gpu_1x"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
