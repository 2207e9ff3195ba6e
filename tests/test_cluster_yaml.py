"""Offline checks of cluster.yaml: Ray's own validation, and the security properties it must keep.

Validation is what `ray up` does before it touches AWS (ray/autoscaler/_private/commands.py,
_bootstrap_config): `prepare_config` merges the AWS defaults file shipped with Ray, merges the setup
commands and fills per-type worker limits; `validate_config` checks the result against
ray/autoscaler/ray-schema.json (unknown keys, types, integer resources) and the head-type and
min/max-worker rules. Neither calls AWS; the `no_network` fixture makes sure of that. Both are internal
Ray APIs (checked against Ray 2.60).
"""

import copy
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection or name lookup fails the test: the validation has to be offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"cluster.yaml validation tried to reach the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def raw_config():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def ray_validate(config):
    """prepare + validate, the offline half of `ray up`; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def start_commands(config):
    return config["head_start_ray_commands"] + config["worker_start_ray_commands"]


def test_every_node_tracks_train_state_for_the_dashboard(raw_config):
    starts = [c for c in start_commands(raw_config) if "ray start" in c]
    assert len(starts) == 2 and all("RAY_TRAIN_ENABLE_STATE_TRACKING=1 ray start" in c for c in starts)


def test_ray_accepts_cluster_yaml(raw_config):
    prepared = ray_validate(raw_config)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cpu_head_and_autoscaling_gpu_workers(raw_config):
    types = raw_config["available_node_types"]
    head = types[raw_config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head should be a CPU node"
    workers = {name: t for name, t in types.items() if name != raw_config["head_node_type"]}
    assert len(workers) >= 2
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, f"{name} is not a GPU type"
        assert node_type["min_workers"] == 0, f"{name} should scale down to zero"
        assert node_type["max_workers"] >= 1, f"{name} can never start"
    assert any("InstanceMarketOptions" in t["node_config"] for t in workers.values()), "no spot worker type"
    assert "InstanceMarketOptions" not in head["node_config"], "the head must not be spot"


def test_every_node_can_reach_s3_storage(raw_config):
    # storage_path is on S3: every node writes checkpoints there, so every node needs a role.
    for name, node_type in raw_config["available_node_types"].items():
        assert "IamInstanceProfile" in node_type["node_config"], f"{name} has no IAM instance profile"


def test_no_ray_managed_security_group(raw_config):
    """Only SSH, from the user's CIDR. Ray's auto-created group always adds tcp/22 from 0.0.0.0/0,
    so every node type must name the user's own group (then Ray adds no rules) and the ignored
    `provider.security_group` must not be there to suggest otherwise."""
    assert "security_group" not in raw_config["provider"]
    for name, node_type in raw_config["available_node_types"].items():
        groups = node_type["node_config"].get("SecurityGroupIds")
        assert groups and all(re.fullmatch(r"sg-[0-9a-f]+", g) for g in groups), f"{name}: {groups!r}"
        assert "NetworkInterfaces" not in node_type["node_config"]


def test_aws_bootstrap_leaves_security_groups_alone(raw_config, monkeypatch):
    """Runs Ray's own security-group step with every AWS call replaced by a failure: it must return
    the configured group without creating a group or authorizing any ingress rule."""
    pytest.importorskip("boto3", reason="Ray's AWS provider needs boto3 (pip install -e .[aws])")
    from ray.autoscaler._private.aws import config as aws_config

    def no_aws(*args, **kwargs):
        raise AssertionError("Ray tried to create or change a security group")

    monkeypatch.setattr(aws_config, "_resource", no_aws)
    monkeypatch.setattr(aws_config, "_client", no_aws)
    prepared = ray_validate(raw_config)
    expected = {name: t["node_config"]["SecurityGroupIds"] for name, t in prepared["available_node_types"].items()}
    out = aws_config._configure_security_group(copy.deepcopy(prepared))
    assert {name: t["node_config"]["SecurityGroupIds"] for name, t in out["available_node_types"].items()} == expected


def test_dashboard_and_job_api_stay_on_loopback(raw_config):
    head_start = " ".join(raw_config["head_start_ray_commands"])
    assert "ray start --head" in head_start
    assert re.findall(r"--dashboard-host[= ](\S+)", head_start) == ["127.0.0.1"]
    everything = yaml.safe_dump(raw_config)
    assert "0.0.0.0" not in everything, "nothing may listen on, or be opened to, all addresses"
    for cmd in start_commands(raw_config):
        assert "--ray-client-server-port" not in cmd and "--dashboard-agent" not in cmd, cmd


def test_setup_installs_this_project(raw_config):
    assert raw_config["file_mounts"].get("~/autodeeplab-ray") == "."
    assert any("pip install" in c and "autodeeplab-ray[aws]" in c for c in raw_config["setup_commands"])
    assert any("pip install" in c and "torch" in c for c in raw_config["setup_commands"])


def _unknown_node_type_key(c):
    c["available_node_types"]["gpu_1x"]["instance_type"] = "g5.2xlarge"


def _unknown_top_level_key(c):
    c["dashboard_host"] = "0.0.0.0"


def _fractional_gpu_resource(c):
    c["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5


def _min_workers_over_cluster_max(c):
    c["available_node_types"]["gpu_1x"]["min_workers"] = c["max_workers"] + 1


def _head_type_missing(c):
    c["head_node_type"] = "no_such_type"


@pytest.mark.parametrize(
    "break_it",
    [
        _unknown_node_type_key,
        _unknown_top_level_key,
        _fractional_gpu_resource,
        _min_workers_over_cluster_max,
        _head_type_missing,
    ],
)
def test_ray_rejects_a_broken_copy(raw_config, break_it):
    """The same validation must be able to fail, or passing it would mean nothing."""
    broken = copy.deepcopy(raw_config)
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(broken)
