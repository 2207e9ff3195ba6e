"""Is the embedded synthetic task architecture-sensitive? Train hand-built discrete networks that share a cell
and differ only in their path, for the same number of steps, and print their per-class IoU (markdown).

The intent (issue 3): a net that stays at stride 4-8 should win the small and thin classes (dot, curve), a
net that descends to stride 32 the context classes (marker_warm/cool). What it measures on the current task
(96 px, F = 8, 320 steps): `DiscreteNet`'s DeepLabv3+ decoder gives every path a rate-4 skip, so dot and curve
come out even; the stride-32 net loses the mid-scale band orientation (stripes_v, about 0.25 against 0.5); the
two marker classes split between the nets by a few points and swap between task variants. So the intended
split is not shown yet: treat this script as the measuring stick for the next task revision.

    python experiments/arch_sensitivity.py                 # two nets, a few minutes on 2 idle CPU cores
    python experiments/arch_sensitivity.py --paths stride4-8,stride32,stride4 --cell small
    python experiments/arch_sensitivity.py --smoke-test
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from orchestrator.data import load_dataset, make_loader
from search_space import DiscreteNet, Genotype

CELLS = {
    "dil": ((("sep_conv_3x3", 1), ("skip_connect", 0)), (("dil_conv_3x3", 2), ("sep_conv_3x3", 1))),
    "small": ((("skip_connect", 1), ("sep_conv_3x3", 0)), (("skip_connect", 2), ("sep_conv_3x3", 1))),
}
"""Cells shared by both networks, so only the path differs. ``small`` grows the receptive field by one
separable conv per layer, so the stride decides how far a network sees."""

PATHS = {"stride4": (0, 0, 0, 0, 0, 0), "stride4-8": (0, 0, 1, 1, 1, 1), "stride32": (0, 1, 2, 3, 3, 3),
         "stride32-nolow": (1, 2, 3, 3, 3, 3)}


def train(net: torch.nn.Module, loader, epochs: int, weights: torch.Tensor, lr: float) -> None:
    """Adam with a cosine schedule and class-weighted cross-entropy; prints the mean loss of each epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    net.train()
    for epoch in range(epochs):
        total = 0.0
        for image, label in loader:
            loss = F.cross_entropy(net(image), label, weight=weights, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(loader):.3f}", flush=True)


@torch.no_grad()
def per_class_iou(net: torch.nn.Module, loader, num_classes: int) -> torch.Tensor:
    """IoU of every class over the whole loader (NaN for a class absent from both prediction and label)."""
    net.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for image, label in loader:
        pred = net(image).argmax(1)
        keep = label != 255
        confusion += torch.bincount(label[keep] * num_classes + pred[keep], minlength=num_classes**2).view(
            num_classes, num_classes)
    tp = confusion.diag().double()
    return tp / (confusion.sum(0) + confusion.sum(1) - confusion.diag()).double()


def table(classes: tuple[str, ...], results: dict[str, torch.Tensor]) -> str:
    names = list(results)
    lines = ["| class | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c, cls in enumerate(classes):
        lines.append(f"| {cls} | " + " | ".join(f"{results[n][c]:.3f}" for n in names) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{results[n].nanmean():.3f}**" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--size", type=int, default=512, help="training images")
    p.add_argument("--val-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--filters", type=int, default=8, help="filter multiplier F")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cell", choices=sorted(CELLS), default="dil")
    p.add_argument("--paths", default="stride4-8,stride32", help=f"comma-separated, from {', '.join(PATHS)}")
    p.add_argument("--smoke-test", action="store_true", help="a few steps, to check the script runs")
    args = p.parse_args()
    if args.smoke_test:
        args.epochs, args.size, args.val_size = 1, 16, 8
    torch.set_num_threads(args.threads)

    train_ds = load_dataset("synthetic", None, "train", train=True, crop_size=args.image_size, seed=args.seed,
                            size=args.size, cache=True)
    val_ds = load_dataset("synthetic", None, "val", train=False, crop_size=args.image_size, seed=args.seed,
                          size=args.val_size, cache=True)
    weights = train_ds.class_weights()
    results = {}
    for name in args.paths.split(","):
        path = PATHS[name]
        torch.manual_seed(args.seed)
        net = DiscreteNet(Genotype(cell=CELLS[args.cell], path=path), train_ds.num_classes,
                          filter_multiplier=args.filters, stem_channels=(16, 16, 32), aspp_channels=48)
        loader = make_loader(train_ds, args.batch_size, shuffle=True, num_workers=0, seed=args.seed, drop_last=True)
        start = time.perf_counter()
        train(net, loader, args.epochs, weights, args.lr)
        results[name] = per_class_iou(net, make_loader(val_ds, 16, shuffle=False, num_workers=0, seed=0,
                                                       drop_last=False), train_ds.num_classes)
        params = sum(q.numel() for q in net.parameters())
        print(f"{name}: path {path}, {params / 1e3:.0f}k params, trained in {time.perf_counter() - start:.0f} s",
              flush=True)
    print(table(train_ds.classes, results))


if __name__ == "__main__":
    main()
