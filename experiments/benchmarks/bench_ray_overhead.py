"""What running the search inside Ray Train costs: the same search loop with and without Ray, per epoch.

    python experiments/benchmarks/bench_ray_overhead.py                      # default.yaml, 4 epochs, 2 rounds
    python experiments/benchmarks/bench_ray_overhead.py --config experiments/configs/smoke.yaml --epochs 2 --rounds 1
    python experiments/benchmarks/bench_ray_overhead.py search.max_steps_per_epoch=8 --json

Two variants of one `TorchTrainer` over `orchestrator.train.search_loop.train_fn_per_worker`, each in a fresh process:

- ``local``: Ray Train's local mode (``ScalingConfig(num_workers=0)``): the loop runs in the calling process
  with no Ray cluster, no worker actor and no checkpoint upload (``ray.train.report`` keeps it in memory).
- ``ray``: a local Ray cluster (``ray.init``) and one Train worker actor: placement group, worker start-up,
  the train run's controller, reports and checkpoints persisted to the run's storage every epoch.

Both write the same TensorBoard logs and per-epoch records (``<run>/epochs/epoch-k.json``). An epoch's wall
time is the interval between consecutive records, so it holds everything one epoch costs in each variant
(train, validation, logging, report and checkpoint). The overhead is ``ray / local - 1`` of the median epoch;
the one-off start-up (``fit`` start to the first record, minus that epoch's own time) is reported apart. The
variants run interleaved ``--rounds`` times because this machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from orchestrator.cli import HelpFormatter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
VARIANTS = ("local", "ray")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "experiments", "configs", "default.yaml"),
                   help="the config whose search loop is timed")
    p.add_argument("--epochs", type=int, default=4, help="search epochs per run (arch updates from epoch 1)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the worker (torch threads) and of the Ray cluster")
    p.add_argument("--rounds", type=int, default=2, help="runs per variant, interleaved")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--storage", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return p.parse_args(argv)


def bench_config(args: argparse.Namespace):
    """The config both variants run: one worker with all the CPUs, arch updates from the start, no sweep."""
    sys.path.insert(0, REPO)
    from orchestrator.config import load_config

    fixed = [f"search.epochs={args.epochs}", "search.warmup_epochs=0", "scaling.num_workers=1",
             f"scaling.cpus_per_worker={args.cpus}", "runtime.checkpoint_every=1"]
    return load_config(args.config, fixed + list(args.overrides))


def child(args: argparse.Namespace) -> dict:
    """Fit the search once in this process (``args.child`` says how) and time it from its records."""
    import ray

    from orchestrator.config import config_to_dict
    from orchestrator.train.search_loop import train_fn_per_worker
    from orchestrator.train.trainers import run_dir, torch_trainer
    from orchestrator.train.worker import EPOCHS_DIR

    cfg = bench_config(args)
    directory = run_dir(args.storage, f"bench-{args.child}")
    loop_config = {"config": config_to_dict(cfg), "stop_at_epoch": None, "run_dir": directory}
    t_init = time.time()
    if args.child == "ray":
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    t0 = time.time()
    workers = 0 if args.child == "local" else 1
    torch_trainer(train_fn_per_worker, loop_config, cfg, (args.storage, f"bench-{args.child}"), workers).fit()
    t1 = time.time()
    folder = os.path.join(directory, EPOCHS_DIR)
    stamps = [os.stat(os.path.join(folder, f)).st_mtime for f in sorted(os.listdir(folder))]
    epochs = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    first = stamps[0] - t0
    return {"fit_s": t1 - t0, "ray_init_s": t0 - t_init, "epoch_wall_s": epochs, "first_epoch_s": first,
            # the first epoch also holds start-up: count as start-up what it took beyond a median epoch
            "startup_s": first - statistics.median(epochs) if epochs else first,
            "after_last_record_s": t1 - stamps[-1], "epochs": len(stamps)}


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    storage = tempfile.mkdtemp(prefix=f"bench-ray-{variant}-")
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--storage", storage,
               "--config", args.config, "--epochs", str(args.epochs), "--cpus", str(args.cpus), *args.overrides]
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"variant {variant!r} failed (exit {proc.returncode})")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    out: dict = {"config": os.path.relpath(args.config, REPO), "epochs": args.epochs, "cpus": args.cpus,
                 "overrides": args.overrides, "rounds": args.rounds}
    for variant, rs in runs.items():
        epochs = [e for r in rs for e in r["epoch_wall_s"]]
        out[variant] = {"epoch_wall_s": {"median": statistics.median(epochs), "min": min(epochs), "n": len(epochs)},
                        "startup_s": statistics.median(r["startup_s"] for r in rs),
                        "fit_s": statistics.median(r["fit_s"] for r in rs),
                        "ray_init_s": statistics.median(r["ray_init_s"] for r in rs)}
    local, ray = out["local"], out["ray"]
    out["epoch_overhead"] = round(ray["epoch_wall_s"]["median"] / local["epoch_wall_s"]["median"] - 1, 4)
    out["startup_overhead_s"] = round(ray["startup_s"] + ray["ray_init_s"] - local["startup_s"], 2)
    out["fit_overhead"] = round(ray["fit_s"] / local["fit_s"] - 1, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for rnd in range(args.rounds):
        for variant in VARIANTS:
            runs[variant].append(run_variant(args, variant))
            if not args.json:
                r = runs[variant][-1]
                print(f"round {rnd} {variant}: fit {r['fit_s']:.1f} s, epochs "
                      + " ".join(f"{e:.2f}" for e in r["epoch_wall_s"]), file=sys.stderr)
    print(json.dumps(summarize(runs, args), indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
