"""What the Ray cluster can hold: the one place that checks resources before anything starts.

A cluster is its nodes that are up now and, when it autoscales, the nodes its autoscaler may still add: each
worker type's resources up to its ``max_workers``, all types together up to the config's ``max_workers``. The
autoscaler's config is read from ``ADL_AUTOSCALING_CONFIG`` when set, else from ``~/ray_bootstrap_config.yaml``,
the file `ray up` leaves on the head of every cluster it launches (Ray Tune reads the same file to tell an
autoscaling cluster). A request is refused up front only when no node the cluster has or can get could ever
hold it (Ray would wait forever: docs/notes/ray.md); otherwise trials wait for the autoscaler, and how many run
at once is sized from the cluster at its largest, not from the nodes that happen to be up at submit time.

A request is a list of bundles (a Tune trial's driver, then one per Train worker), placed first-fit on the
largest bundles first, as Ray's placement groups spread a worker group over nodes when one node cannot hold it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AUTOSCALING_CONFIG_ENV = "ADL_AUTOSCALING_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
IGNORED = ("memory", "object_store_memory")
"""Resources Ray reports that requests here never ask for (and that differ per node)."""


class ResourceError(RuntimeError):
    """What the config asks for can never be placed on this cluster; raised before Ray would wait forever."""


@dataclass(frozen=True)
class NodeType:
    """A worker type the autoscaler may launch: its resources and how many of it at most."""

    name: str
    resources: dict[str, float]
    max_workers: int


@dataclass(frozen=True)
class Cluster:
    """The nodes up now (their total resources) and what the autoscaler may add."""

    nodes: list[dict[str, float]]
    types: list[NodeType] = field(default_factory=list)
    max_workers: int = 0  # worker nodes the autoscaler may run in all (0: not an autoscaling cluster)
    head_type: str | None = None

    @property
    def autoscaling(self) -> bool:
        return bool(self.types) and self.max_workers > 0


def _resources(raw: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in raw.items() if not k.startswith("node:") and k not in IGNORED
            and not k.startswith("accelerator_type")}


def read_autoscaling_config(path: str | None = None) -> dict[str, Any] | None:
    """The autoscaler's cluster config (see the module docstring), or None when there is none."""
    path = path or os.environ.get(AUTOSCALING_CONFIG_ENV) or BOOTSTRAP_CONFIG
    file = Path(path).expanduser()
    if not file.is_file():
        return None
    with file.open() as f:
        config = yaml.safe_load(f)
    return config if isinstance(config, dict) and "available_node_types" in config else None


def node_types(config: dict[str, Any]) -> tuple[list[NodeType], str | None, int]:
    """The worker types of an autoscaler config (the head type too, when it may have workers of its own),
    the head type's name and the global worker limit."""
    head = config.get("head_node_type")
    types = [NodeType(name, _resources(body.get("resources") or {}), int(body.get("max_workers", 0)))
             for name, body in (config.get("available_node_types") or {}).items()]
    limit = int(config.get("max_workers", sum(t.max_workers for t in types if t.name != head)))
    return [t for t in types if t.max_workers > 0], head, limit


def current_cluster(config_path: str | None = None) -> Cluster:
    """The connected Ray cluster (``ray.init`` first): its alive nodes and, when it autoscales, its types."""
    import ray

    nodes = [_resources(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    config = read_autoscaling_config(config_path)
    if config is None:
        return Cluster(nodes)
    types, head, limit = node_types(config)
    return Cluster(nodes, types, limit, head)


def _fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0)


def _take(bundle: dict[str, float], free: dict[str, float]) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v


def _matches(node: dict[str, float], kind: NodeType) -> bool:
    return all(abs(node.get(k, 0.0) - v) < 1e-9 for k, v in kind.resources.items())


def largest_nodes(cluster: Cluster, request: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
    """The nodes of the cluster at its largest: those up now, then every node the autoscaler may add (each type
    up to its limit, minus the nodes of it already up, and all of them up to the global limit). Where the global
    limit binds, types that can hold the request's largest bundle come first, then larger types."""
    nodes = [dict(n) for n in cluster.nodes]
    if not cluster.autoscaling:
        return nodes
    up = {t.name: sum(_matches(n, t) for n in cluster.nodes) for t in cluster.types}
    room = max(0, cluster.max_workers - max(0, len(cluster.nodes) - 1))  # the head is not a worker
    widest = max(request or [{}], key=lambda b: sum(b.values()))
    for kind in sorted(cluster.types, key=lambda t: (not _fits(widest, t.resources), -sum(t.resources.values()))):
        extra = min(max(0, kind.max_workers - up[kind.name]), room)
        nodes += [dict(kind.resources) for _ in range(extra)]
        room -= extra
    return nodes


def copies_that_fit(request: list[dict[str, float]], nodes: list[dict[str, float]], at_most: int = 10_000) -> int:
    """How many copies of ``request`` (all its bundles each) fit on ``nodes`` at once, first-fit decreasing."""
    free = [dict(n) for n in nodes]
    bundles = sorted(request, key=lambda b: -sum(b.values()))
    count = 0
    while count < at_most:
        trial = [dict(f) for f in free]
        for bundle in bundles:
            spot = next((f for f in trial if _fits(bundle, f)), None)
            if spot is None:
                return count
            _take(bundle, spot)
        free, count = trial, count + 1
    return count


def show(resources: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in resources.items() if v > 0)


def total(request: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for bundle in request:
        for k, v in bundle.items():
            out[k] = out.get(k, 0.0) + v
    return out


def capacity(request: list[dict[str, float]], what: str, advice: str, cluster: Cluster | None = None) -> int:
    """How many copies of ``request`` the cluster can run at once at its largest (>= 1), saying so when some must
    wait for the autoscaler; ResourceError naming ``what`` it is and ``advice`` when never even one fits."""
    cluster = cluster or current_cluster()
    largest = largest_nodes(cluster, request)
    fits = copies_that_fit(request, largest)
    if fits < 1:
        biggest = {k: max((n.get(k, 0.0) for n in largest), default=0.0) for k in total(request)}
        growth = (f"; at its largest (the autoscaler's {', '.join(t.name for t in cluster.types)} up to their "
                  "max_workers) it still cannot" if cluster.autoscaling else "")
        raise ResourceError(
            f"{what} needs {show(total(request))} ({len(request)} bundles; one worker on one node, the largest node "
            f"has {show(biggest)}), but the Ray cluster has {show(total(largest) if largest else {})}{growth}. "
            f"{advice}; Ray would otherwise wait forever.")
    now = copies_that_fit(request, cluster.nodes)
    if now < fits:
        print(f"resources: {what} needs {show(total(request))}; the nodes up now hold {now} at once, the cluster "
              f"at its largest {fits}: the rest wait while the autoscaler adds nodes", flush=True)
    return fits


# ---------------------------------------------------------------------------------------------- requests


def worker_bundle(cfg: Any, custom: dict[str, float] | None = None) -> dict[str, float]:
    """One Train worker: ``scaling.cpus_per_worker``, a GPU share with ``scaling.use_gpu``, custom resources."""
    sc = cfg.scaling
    return {"CPU": float(sc.cpus_per_worker), **({"GPU": float(sc.gpus_per_worker)} if sc.use_gpu else {}),
            **{k: float(v) for k, v in (custom or {}).items()}}


def run_request(cfg: Any, workers: int, custom: dict[str, float] | None = None) -> list[dict[str, float]]:
    """A Train run started by this process (no Tune trial around it): its workers."""
    return [worker_bundle(cfg, custom)] * workers


def trial_request(cfg: Any, workers: int, custom: dict[str, float] | None = None) -> list[dict[str, float]]:
    """A Tune trial that starts a Train run: its driver's CPU share, then the workers (Tune does not count the
    workers a trial starts: docs/notes/ray.md)."""
    return [{"CPU": float(cfg.tune.trial_cpus)}, *run_request(cfg, workers, custom)]
