"""Is the embedded synthetic task architecture-sensitive? Train hand-built discrete networks that share a cell
and differ only in their path, for the same number of steps, and print their per-class IoU (markdown) and how
often they give a marker the right colour family (0.5 = no context).

Issue 3 asks that a net that stays at stride 4-8 and one that descends to stride 32 fail different classes.
By default both are four layers deep like the default search (``stride4-8`` = levels 0, 0, 1, 1, ``stride32`` =
0, 1, 2, 3), use the ``small`` cell (one separable conv per cell input, so the receptive field grows with the
stride) and ``--head search``: the SearchASPP of the last rate without a decoder, the single-path network the
supernet scores. Measured on 2 shared CPU cores (512 images of 128 px, 10 epochs, F = 8, seed 0; 3 min):

| class | stride4-8 | stride32 |
|---|---|---|
| background | 0.811 | 0.707 |
| stripes_h | 0.712 | 0.611 |
| stripes_v | 0.694 | 0.547 |
| blob | 0.852 | 0.608 |
| dot | 0.125 | 0.000 |
| curve | 0.047 | 0.005 |
| marker_warm | 0.352 | 0.401 |
| marker_cool | 0.229 | 0.425 |
| **mIoU** | **0.478** | **0.413** |
| marker family accuracy | 0.49 | 0.80 |

The stride-32 net loses dots and curves (its 4x4 map cannot hold them) and the outlines of everything; the
stride-4-8 net cannot see the blob colour beyond a marker's halo, so it guesses the family (0.49) and loses
both marker classes. ``--seed 1`` gives the same split (dot 0.195 / 0.000, marker_warm 0.342 / 0.393,
marker_cool 0.297 / 0.438, family accuracy 0.52 / 0.80). With ``--head deeplabv3+`` (the retrain network;
5 min) the decoder's rate-4 skip evens out dot (0.40 / 0.43) and curve (0.11 / 0.11) and the context split
stays: marker_warm 0.35 / 0.53, marker_cool 0.27 / 0.57 (family accuracy 0.50 / 0.74). At 64 px
(``--image-size 64``, the search config's crop; 2 min) a stride-32 net has a 2x2 map and loses every class to
the stride-4-8 net (mIoU 0.15 / 0.29, blob 0.34 / 0.68, markers 0.17 / 0.28 with family accuracy 0.64 / 0.52):
there the search head cannot favour the deep path for context. Curves (1-2 px) stay near zero for every net
here: no output is finer than stride 4.

    python experiments/studies/arch_sensitivity.py                    # the table above
    python experiments/studies/arch_sensitivity.py --head deeplabv3+  # the retrain head
    python experiments/studies/arch_sensitivity.py --paths stride4-8,stride16,stride32 --cell dil
    python experiments/studies/arch_sensitivity.py --smoke-test
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from orchestrator.cli import HelpFormatter
from orchestrator.data import load_dataset, make_loader
from orchestrator.data.synthetic import MARKER_COOL, MARKER_WARM
from search_space import DiscreteNet, Genotype
from search_space.discrete import HEADS

CELLS = {
    "dil": ((("sep_conv_3x3", 1), ("skip_connect", 0)), (("dil_conv_3x3", 2), ("sep_conv_3x3", 1))),
    "small": ((("skip_connect", 1), ("sep_conv_3x3", 0)), (("skip_connect", 2), ("sep_conv_3x3", 1))),
}
"""Cells shared by both networks, so only the path differs. ``small`` grows the receptive field by one
separable conv per layer, so the stride decides how far a network sees."""

PATHS = {"stride4": (0, 0, 0, 0), "stride4-8": (0, 0, 1, 1), "stride32": (0, 1, 2, 3), "stride16": (0, 1, 2, 2),
         "stride4-8-deep": (0, 0, 1, 1, 1, 1), "stride32-deep": (0, 1, 2, 3, 3, 3)}
"""Four layers as in the default search config (``search_space.layers: 4``); the ``-deep`` paths have six."""


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
def confusion_matrix(net: torch.nn.Module, loader, num_classes: int) -> torch.Tensor:
    """Pixel counts over the whole loader: row = label, column = prediction."""
    net.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for image, label in loader:
        pred = net(image).argmax(1)
        keep = label != 255
        confusion += torch.bincount(label[keep] * num_classes + pred[keep], minlength=num_classes**2).view(
            num_classes, num_classes)
    return confusion


def per_class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of every class (NaN for a class absent from both prediction and label)."""
    tp = confusion.diag().double()
    return tp / (confusion.sum(0) + confusion.sum(1) - confusion.diag()).double()


def marker_family_accuracy(confusion: torch.Tensor) -> float:
    """Of the marker pixels predicted as some marker, the fraction given the right family (0.5 = no context)."""
    m = confusion[MARKER_WARM:MARKER_COOL + 1, MARKER_WARM:MARKER_COOL + 1].double()
    return float(m.diag().sum() / m.sum().clamp(min=1))


def table(classes: tuple[str, ...], results: dict[str, torch.Tensor]) -> str:
    names = list(results)
    lines = ["| class | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c, cls in enumerate(classes):
        lines.append(f"| {cls} | " + " | ".join(f"{results[n][c]:.3f}" for n in names) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{results[n].nanmean():.3f}**" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="training epochs per network")
    p.add_argument("--size", type=int, default=512, help="training images")
    p.add_argument("--val-size", type=int, default=64, help="validation images")
    p.add_argument("--image-size", type=int, default=128,
                   help="128: a stride-32 net has a 4x4 map (2x2 at the search config's 64 px crops)")
    p.add_argument("--batch-size", type=int, default=8, help="images per training step")
    p.add_argument("--filters", type=int, default=8, help="filter multiplier F")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order")
    p.add_argument("--cell", choices=sorted(CELLS), default="small", help="the cell both networks share")
    p.add_argument("--head", choices=HEADS, default="search",
                   help="search: the SearchASPP the supernet scores (no decoder); deeplabv3+: the retrain head")
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
                          filter_multiplier=args.filters, stem_channels=(16, 16, 32), aspp_channels=48,
                          head=args.head)
        loader = make_loader(train_ds, args.batch_size, shuffle=True, num_workers=0, seed=args.seed, drop_last=True)
        start = time.perf_counter()
        train(net, loader, args.epochs, weights, args.lr)
        confusion = confusion_matrix(net, make_loader(val_ds, 16, shuffle=False, num_workers=0, seed=0,
                                                      drop_last=False), train_ds.num_classes)
        results[name] = per_class_iou(confusion)
        params = sum(q.numel() for q in net.parameters())
        print(f"{name}: path {path}, {params / 1e3:.0f}k params, trained in {time.perf_counter() - start:.0f} s, "
              f"marker family accuracy {marker_family_accuracy(confusion):.2f}", flush=True)
    print(table(train_ds.classes, results))


if __name__ == "__main__":
    main()
