"""Benchmark one supernet search step: time, peak memory, parameters, FLOPs and the fraction of peak.

    python experiments/benchmarks/bench_supernet.py --ops darts --crop 129 --batch 2 --json
    python experiments/benchmarks/bench_supernet.py --ops darts --vs=--rev=e08581b --vs=--checkpoint-cells --rounds 3
    python experiments/benchmarks/bench_supernet.py --device cuda --crop 321 --amp bf16 --channels-last --json
    python experiments/benchmarks/bench_supernet.py --smoke-test

A step is what one iteration of the first-order search does, timed with the search loop's own functions
(`orchestrator.train.steps`): a weight step (zero grads, forward on a trainA batch, cross-entropy, backward,
gradient clip, SGD) and an arch step (forward on a trainB batch, gradients of alpha and beta only, Adam);
``search_step_s`` is the two together. The public port's figures (docs/notes/public-port.md) time zero
grads + forward + loss + backward with every gradient, which is the weight step without the SGD update:
compare them with ``weight_step_s``. The port has no cheaper arch step, so its search step is two of its
steps: ``vs_port.search_step_ratio`` is ``search_step_s`` over twice the port's step.

Every measurement runs in a fresh subprocess, so peak resident memory (``ru_maxrss``) belongs to one
config. ``--vs ARGS`` adds a variant (the base arguments followed by ARGS); variants run interleaved,
``--rounds`` times, because this machine's speed drifts by up to 1.7x between runs of the same config.
``--rev REV`` runs the search space of a git revision instead of the working tree (the baseline).
``--port DIR`` adds the public port itself (a checkout of NoamRosenberg/autodeeplab) as a variant of the
same rounds: its ``AutoDeeplab`` search model at the same L, B, F, crop and batch, a step being zero grads,
forward, cross-entropy and backward of every parameter. Two things are switched in its process only, so it
runs on CPU unmodified: its own non-CUDA batch norm (the branch it takes on Windows instead of the compiled
InPlaceABN) and ``Tensor.cuda`` as a no-op (its forward moves one tensor to the GPU). It accepts only crops
near 64k + 1 (65, 129, 321, ...).

FLOPs are counted analytically with forward hooks on every conv (`search_space.summary.count_macs`,
FLOPs = 2 x MACs) on the plain reference forward, so they are the math of the step, not of any one
implementation; a step is taken as 3 x forward (backward ~ 2 x forward). The dense 3x3 conv throughput
measured in the same run gives the fraction of the machine's attainable rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from orchestrator.cli import HelpFormatter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
PORT_CPU = {  # the public port on this machine type, 2 threads (docs/notes/public-port.md): step s median, peak RSS GB
    (12, 5, 8, 65): (15.9, 1.19), (12, 5, 8, 129): (18.4, 2.75), (12, 5, 8, 321): (41.0, 13.9),
    (6, 5, 4, 65): (4.46, 0.52),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--layers", type=int, default=12, help="trellis layers L")
    p.add_argument("--blocks", type=int, default=5, help="blocks per cell B")
    p.add_argument("--filter-multiplier", type=int, default=8, help="filter multiplier F")
    p.add_argument("--crop", type=int, default=129, help="side of the square input images")
    p.add_argument("--batch", type=int, default=2, help="images per step")
    p.add_argument("--classes", type=int, default=19, help="output classes")
    p.add_argument("--ops", choices=["paper", "darts"], default="paper", help="op family (search_space.ops)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the steps run")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    p.add_argument("--warmup", type=int, default=1, help="untimed weight+arch steps first")
    p.add_argument("--steps", type=int, default=3, help="timed weight+arch steps per process")
    p.add_argument("--checkpoint-cells", action="store_true", help="recompute each node in backward")
    p.add_argument("--checkpoint-levels", default="", help="recompute the nodes of these levels, e.g. 0 or 0,1")
    p.add_argument("--store-units", action="store_true",
                   help="separable units store their activations instead of recomputing them in backward")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype (GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--impl", choices=["fast", "reference"], default="fast",
                   help="reference: time the plain per-path forward instead")
    p.add_argument("--rev", default=None, help="git revision whose search_space to run (e.g. e08581b)")
    p.add_argument("--port", default=None, metavar="DIR",
                   help="a checkout of NoamRosenberg/autodeeplab: time the public port in the same rounds")
    p.add_argument("--vs", action="append", default=[], metavar="ARGS",
                   help="another variant: the base arguments followed by ARGS; repeatable")
    p.add_argument("--rounds", type=int, default=1, help="fresh processes per variant, interleaved")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting and the dense-conv probe")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--smoke-test", action="store_true", help="tiny config, one step: seconds")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke_test:
        args.layers, args.blocks, args.filter_multiplier, args.crop, args.classes = 3, 2, 2, 33, 5
        args.warmup, args.steps = 0, 1
    return args


def dense_conv_gflops(device: str, seconds: float = 0.5) -> float:
    """Best GFLOP/s of a dense 3x3 conv at 64, 128 and 256 channels (batch 2, 33x33 to 65x65)."""
    import torch

    best = 0.0
    for c, s in ((64, 65), (128, 65), (256, 33)):
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device)
        x = torch.randn(2, c, s, s, device=device)
        flops = 2 * 2 * c * c * 9 * s * s
        with torch.no_grad():
            conv(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                conv(x)
                n += 1
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, flops * n / (time.perf_counter() - t0) / 1e9)
    return best


def count_flops(net, crop: int) -> float:
    """Forward GFLOP at batch 1 of the plain reference math (convs only)."""
    import torch

    from search_space.summary import count_macs

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            fwd = getattr(self.net, "forward_reference", self.net.forward)
            return fwd(x)

    return 2 * count_macs(Reference(), (crop, crop)) / 1e9


def build(args: argparse.Namespace):
    import torch

    from search_space import SuperNet

    kwargs = {"checkpoint_cells": True} if args.checkpoint_cells else {}
    if args.checkpoint_levels:
        kwargs = {"checkpoint_cells": [int(v) for v in args.checkpoint_levels.split(",")]}
    if args.store_units:
        kwargs["recompute_units"] = False
    net = SuperNet(args.classes, layers=args.layers, blocks=args.blocks, filter_multiplier=args.filter_multiplier,
                   ops=args.ops, **kwargs)
    if args.impl == "reference":
        net.forward = net.forward_reference
    net = net.to(args.device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def measure(args: argparse.Namespace) -> dict:
    """Build the supernet and time warm-up + timed steps in this process."""
    import torch
    from torch import nn

    from orchestrator.train.steps import StepOptions, arch_step, weight_step

    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    net = build(args)
    model = torch.compile(net) if args.compile else net
    opt_w = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    opt_a = torch.optim.Adam(net.arch_parameters(), lr=3e-3, weight_decay=1e-3)
    opts = StepOptions(bf16=args.amp == "bf16", channels_last=args.channels_last, grad_clip=5.0)
    criterion, device = nn.CrossEntropyLoss(), torch.device(args.device)
    shape = (args.batch, 3, args.crop, args.crop)
    xs = [torch.randn(shape, device=args.device) for _ in range(2)]
    ys = [torch.randint(0, args.classes, (args.batch, args.crop, args.crop), device=args.device) for _ in range(2)]
    if args.channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    cuda = args.device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step(i: int, arch: bool) -> tuple[float, float]:
        """The loop's own step functions (orchestrator.train.steps), on one process (no DDP)."""
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        if arch:
            arch_step(model, (xs[i], ys[i]), opt_a, criterion, opts, device)
        else:
            weight_step(model, net, (xs[i], ys[i]), opt_w, criterion, opts, device)
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step(0, False)
        step(1, True)
    w_times, a_times = [], []
    for _ in range(args.steps):
        w_times.append(step(0, False))
        a_times.append(step(1, True))
    out = {
        "weight_step_s": [t for t, _ in w_times], "arch_step_s": [t for t, _ in a_times],
        "search_step_s": [w + a for (w, _), (a, _) in zip(w_times, a_times, strict=True)],
        "weight_step_cpu_s": [c for _, c in w_times],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # kB on Linux
        "rss_after_build_gb": rss_built,
        "weight_params_m": sum(p.numel() for p in net.weight_parameters()) / 1e6,
    }
    if cuda:
        out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if not args.no_flops:
        out["fwd_gflop"] = count_flops(net.cpu() if cuda else net, args.crop) * args.batch
    return out


def measure_port(args: argparse.Namespace) -> dict:
    """Time the public port's search model (checkout ``args.port``) in this process: weight steps only."""
    import platform

    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    platform.system = lambda: "Windows"  # its plain BN + ReLU instead of InPlaceABN, a compiled CUDA extension
    torch.Tensor.cuda = lambda self, *a, **k: self  # its forward calls .cuda() on one tensor
    sys.path.insert(0, os.path.abspath(args.port))
    from auto_deeplab import AutoDeeplab

    criterion = nn.CrossEntropyLoss()
    net = AutoDeeplab(args.classes, args.layers, criterion, args.filter_multiplier, args.blocks, args.blocks)
    x = torch.randn(args.batch, 3, args.crop, args.crop)
    y = torch.randint(0, args.classes, (args.batch, args.crop, args.crop))

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        net.zero_grad(set_to_none=True)
        criterion(net(x), y).backward()
        return time.perf_counter() - t0, time.process_time() - c0

    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    return {"weight_step_s": [t for t, _ in times], "arch_step_s": [],
            "weight_step_cpu_s": [c for _, c in times],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "rss_after_build_gb": rss_built,
            "weight_params_m": sum(p.numel() for p in net.weight_parameters()) / 1e6}


def child_cmd(base: list[str], extra: list[str]) -> tuple[list[str], dict]:
    """The command and environment that measure one variant in a fresh process."""
    argv = [a for a in base if a != "--json"] + extra
    args = parse_args(argv)
    env = dict(os.environ)
    if args.rev:
        src = tempfile.mkdtemp(prefix=f"bench-{args.rev}-")
        subprocess.run(f"git -C {shlex.quote(REPO)} archive {shlex.quote(args.rev)} search_space "
                       f"| tar -x -C {shlex.quote(src)}", shell=True, check=True)
        env["PYTHONPATH"] = os.pathsep.join([src, REPO, env.get("PYTHONPATH", "")])  # REPO: orchestrator.train.steps
    else:
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return [sys.executable, os.path.abspath(__file__), "--child", *argv], env


def summarize(label: str, args: argparse.Namespace, runs: list[dict], dense: list[float]) -> dict:
    w = [t for r in runs for t in r["weight_step_s"]]
    a = [t for r in runs for t in r["arch_step_s"]]
    both = [t for r in runs for t in r.get("search_step_s", [])]
    first = runs[0]
    res = {
        "variant": label,
        "config": {k: getattr(args, k) for k in ("layers", "blocks", "filter_multiplier", "crop", "batch",
                                                  "classes", "ops", "device", "threads", "checkpoint_cells",
                                                  "checkpoint_levels", "store_units",
                                                  "channels_last", "amp", "compile", "impl", "rev", "port")},
        "torch": __import__("torch").__version__,
        "processes": len(runs), "steps": len(w),
        "weight_step_s": {"median": statistics.median(w), "min": min(w)},
        "arch_step_s": {"median": statistics.median(a) if a else None, "min": min(a) if a else None},
        "search_step_s": {"median": statistics.median(both) if both else None, "min": min(both) if both else None},
        # CPU time of the process: less sensitive than wall time to other processes on a shared machine
        # (with several threads it also counts their spin-waits).
        "weight_step_cpu_s": statistics.median(t for r in runs for t in r["weight_step_cpu_s"]),
        "peak_rss_gb": statistics.median(r["peak_rss_gb"] for r in runs),
        "rss_after_build_gb": statistics.median(r["rss_after_build_gb"] for r in runs),
        "weight_params_m": round(first["weight_params_m"], 3),
    }
    if "peak_gpu_mem_gb" in first:
        res["peak_gpu_mem_gb"] = max(r["peak_gpu_mem_gb"] for r in runs)
    if "fwd_gflop" in first:
        step_gflop = 3 * first["fwd_gflop"]
        res["fwd_gflop"] = round(first["fwd_gflop"], 3)
        res["weight_step_gflop"] = round(step_gflop, 3)
        res["achieved_gflops"] = round(step_gflop / res["weight_step_s"]["median"], 2)
    if dense:
        res["dense_conv_gflops"] = round(statistics.median(dense), 1)
        if "achieved_gflops" in res:
            res["fraction_of_dense"] = round(res["achieved_gflops"] / res["dense_conv_gflops"], 4)
    return res


def add_vs_port(res: dict, args: argparse.Namespace, port: dict | None) -> None:
    """Step time and peak memory against the port: measured in this run (``--port``), else
    docs/notes/public-port.md's."""
    if port is not None:
        ref = (port["weight_step_s"]["median"], port["peak_rss_gb"], "measured in this run (--port)")
    elif args.device == "cpu" and args.batch == 2 and args.threads == 2 and \
            (args.layers, args.blocks, args.filter_multiplier, args.crop) in PORT_CPU:
        ref = (*PORT_CPU[(args.layers, args.blocks, args.filter_multiplier, args.crop)],
               "docs/notes/public-port.md (another run: this machine's speed varies by up to 2x)")
    else:
        return
    res["vs_port"] = {"port_step_s": ref[0], "port_peak_rss_gb": ref[1], "source": ref[2],
                      "step_ratio": round(res["weight_step_s"]["median"] / ref[0], 3),
                      "rss_ratio": round(res["peak_rss_gb"] / ref[1], 3)}
    if res["search_step_s"]["median"] is not None:  # the port has no cheaper arch step: two of its steps
        res["vs_port"]["search_step_ratio"] = round(res["search_step_s"]["median"] / (2 * ref[0]), 3)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure_port(args) if args.port_child else measure(args)))
        return 0
    base, skip = [], False
    for a in argv:  # the arguments every variant shares: all but --vs and --rounds
        if skip or a.startswith(("--vs=", "--rounds=")):
            skip = False
        elif a in ("--vs", "--rounds"):
            skip = True
        else:
            base.append(a)
    variants = [("base", [])] + [(v, shlex.split(v)) for v in args.vs]
    if args.port:
        variants.append(("port", ["--port-child", "--no-flops"]))
    runs: dict[str, list[dict]] = {label: [] for label, _ in variants}
    dense: list[float] = []
    for rnd in range(args.rounds):
        if not args.no_flops:
            dense.append(dense_conv_gflops(args.device))
        for label, extra in variants:
            cmd, env = child_cmd(base, extra)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"variant {label!r} failed (exit {proc.returncode})")
            runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if not args.json:
                w = runs[label][-1]["weight_step_s"]
                print(f"round {rnd} {label}: weight step {statistics.median(w):.3f} s, "
                      f"peak RSS {runs[label][-1]['peak_rss_gb']:.2f} GB", file=sys.stderr)
    results = [summarize(label, parse_args(base + extra), runs[label], dense) for label, extra in variants]
    port = results[-1] if args.port else None
    if port is not None:
        port["config"].update(ops="darts", impl="public port", checkpoint_levels="", store_units=False, rev=None)
    for r in results:
        if r is not port and r["config"]["ops"] == "darts":
            add_vs_port(r, args, port)
    if len(results) == 1:
        out = results[0]
    else:
        ref = results[0]["weight_step_s"]["median"]
        for r in results:
            r["step_ratio_to_base"] = round(r["weight_step_s"]["median"] / ref, 3)
        out = {"rounds": args.rounds, "results": results}
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
