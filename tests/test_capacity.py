"""What the cluster can hold (orchestrator/train/capacity.py): refusals only for what no node could ever hold,
concurrency from the cluster at its largest on an autoscaling cluster, and Ray's own node-type choice for the
sweep's pending trials on cluster.yaml (spot GPU nodes for 1 to 4 trials). No Ray cluster is started."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import yaml

from orchestrator.config import load_config
from orchestrator.train import capacity
from orchestrator.train.capacity import Cluster, NodeType, ResourceError

ROOT = Path(__file__).resolve().parents[1]
CITYSCAPES = ROOT / "experiments" / "configs" / "cityscapes.yaml"


def trial(driver: float, workers: int, cpus: float, gpus: float = 0.0, **custom) -> list[dict[str, float]]:
    worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **custom}
    return [{"CPU": driver}] + [dict(worker) for _ in range(workers)]


FIXED = Cluster([{"CPU": 0.0}, {"CPU": 2.0}, {"CPU": 2.0}])
"""The test session's cluster: a head without CPUs and two 2-CPU nodes."""
HEAD_ONLY = Cluster([{"CPU": 8.0}], [NodeType("gpu_1x", {"CPU": 8.0, "GPU": 1.0, "spot": 1.0}, 4),
                                     NodeType("gpu_4x", {"CPU": 48.0, "GPU": 4.0}, 2)], max_workers=6)
"""cluster.yaml after `ray up`: only the CPU head is up."""


@pytest.mark.parametrize(("cluster", "request_", "expected"), [
    (FIXED, trial(0.1, 2, 1.0), 1),                      # 2.1 CPUs: the driver squeezes in beside one worker
    (FIXED, trial(0.1, 1, 1.0), 3),
    (Cluster([{"CPU": 3.0}]), trial(0.1, 2, 1.0), 1),     # the laptop: 2 cores + 1 waiting CPU
    (HEAD_ONLY, trial(0.1, 1, 4.0, 1.0, spot=1.0), 4),   # four spot nodes, one trial each
    (HEAD_ONLY, trial(0.1, 1, 4.0, 1.0), 12),            # no spot asked: 4 on gpu_1x + 8 on two gpu_4x
    (HEAD_ONLY, trial(0.1, 4, 4.0, 1.0), 3),             # 4-GPU trials: one per gpu_4x, one across 4 gpu_1x
])
def test_how_many_copies_fit_on_the_cluster_at_its_largest(cluster, request_, expected):
    assert capacity.copies_that_fit(request_, capacity.largest_nodes(cluster, request_)) == expected


def test_a_head_only_autoscaling_cluster_runs_gpu_trials_and_says_they_wait(capsys):
    assert capacity.capacity(trial(0.1, 1, 4.0, 1.0, spot=1.0), "one trial", "advice", HEAD_ONLY) == 4
    assert "the nodes up now hold 0 at once, the cluster at its largest 4" in capsys.readouterr().out


@pytest.mark.parametrize(("cluster", "request_", "fragment"), [
    (FIXED, trial(0.1, 9, 1.0), "one trial needs CPU=9.1"),
    (FIXED, trial(0.1, 1, 3.0), "the largest node has CPU=2"),
    (FIXED, trial(0.1, 1, 1.0, 1.0), "GPU=1"),
    (HEAD_ONLY, trial(0.1, 1, 16.0, 1.0, spot=1.0), "at its largest (the autoscaler's gpu_1x, gpu_4x"),
    (HEAD_ONLY, trial(0.1, 1, 4.0, 8.0), "GPU=8"),
])
def test_what_no_node_could_ever_hold_is_refused_with_the_need_named(cluster, request_, fragment):
    with pytest.raises(ResourceError, match="Ray would otherwise wait forever") as err:
        capacity.capacity(request_, "one trial", "Lower scaling.num_workers", cluster)
    assert fragment in str(err.value) and "Lower scaling.num_workers" in str(err.value)


def test_nodes_already_up_count_against_their_types_limits():
    two_up = Cluster([{"CPU": 8.0}, {"CPU": 8.0, "GPU": 1.0, "spot": 1.0}, {"CPU": 8.0, "GPU": 1.0, "spot": 1.0}],
                     HEAD_ONLY.types, max_workers=3)
    spot = trial(0.1, 1, 4.0, 1.0, spot=1.0)
    nodes = capacity.largest_nodes(two_up, spot)  # the global limit of 3 workers leaves room for one more
    assert sum(n.get("spot", 0) for n in nodes) == 3 and not any(n.get("GPU") == 4.0 for n in nodes)
    assert capacity.copies_that_fit(spot, nodes) == 3
    wide = capacity.largest_nodes(two_up, trial(0.1, 4, 4.0, 1.0))  # a 4-GPU request: the 4-GPU type first
    assert sum(1 for n in wide if n.get("GPU") == 4.0) == 1


def test_the_autoscaler_config_is_read_from_the_environment_or_the_bootstrap_file(tmp_path, monkeypatch):
    config = {"max_workers": 2, "head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 1}, "max_workers": 0, "node_config": {}},
        "worker": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 2, "node_config": {}}}}
    path = tmp_path / "autoscaling.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv(capacity.AUTOSCALING_CONFIG_ENV, str(path))
    types, head, limit = capacity.node_types(capacity.read_autoscaling_config())
    assert [(t.name, t.resources, t.max_workers) for t in types] == [("worker", {"CPU": 2.0}, 2)]
    assert head == "head" and limit == 2
    monkeypatch.setenv(capacity.AUTOSCALING_CONFIG_ENV, str(tmp_path / "missing.yaml"))
    assert capacity.read_autoscaling_config() is None


def prepared_cluster_yaml() -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(yaml.safe_load((ROOT / "cluster.yaml").read_text())))


@pytest.mark.parametrize("pending", [1, 2, 3, 4])
def test_rays_scheduler_launches_spot_nodes_for_the_sweeps_pending_trials(pending):
    """Ray's own choice of node types (the autoscaler's get_nodes_for) for the placement-group bundles of
    ``pending`` Cityscapes search trials, with the node types of cluster.yaml and only the head up."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    cluster = prepared_cluster_yaml()
    cfg = load_config(str(CITYSCAPES))
    bundles = capacity.run_request(cfg, cfg.scaling.num_workers, cfg.scaling.custom_resources) * pending
    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    added, left = get_nodes_for(cluster["available_node_types"], {cluster["head_node_type"]: 1},
                                cluster["head_node_type"], cluster["max_workers"], bundles, scorer)
    assert not left and dict(added) == {"gpu_1x": pending}
    spot_type = cluster["available_node_types"]["gpu_1x"]
    assert spot_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
