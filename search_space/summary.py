"""Parameter count and multiply-adds of a retrain network (the figures of paper Table 2).

    python -m search_space.summary --variant S --size 1024x2048
    python -m search_space.summary --genotype final/genotype.json --filter-multiplier 20 --size 769x769

Multiply-adds are counted analytically with forward hooks on every conv and linear layer during one
forward of a zero image of the given size (batch 1).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from search_space.discrete import DiscreteNet, autodeeplab
from search_space.genotypes import Genotype


def count_macs(model: nn.Module, size: tuple[int, int], in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of a batch of 1 image of ``size`` (convs and linears)."""
    total = 0

    def conv_hook(mod: nn.Conv2d, inp, out) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total += out.numel() * k

    def linear_hook(mod: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 1024x2048") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", choices=["S", "M", "L"], action="append",
                       help="published Auto-DeepLab variant; repeat for several")
    which.add_argument("--genotype", help="genotype JSON file (as written by a search)")
    parser.add_argument("--filter-multiplier", type=int, default=20, help="F for --genotype (default 20)")
    parser.add_argument("--num-classes", type=int, default=19, help="classes (default 19, Cityscapes)")
    parser.add_argument("--size", type=_parse_size, default=(1024, 2048), help="input HxW (default 1024x2048)")
    args = parser.parse_args(argv)
    if args.genotype:
        try:
            models = {args.genotype: DiscreteNet(Genotype.load(args.genotype), args.num_classes,
                                                 args.filter_multiplier)}
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        models = {f"Auto-DeepLab-{v}": autodeeplab(v, args.num_classes) for v in args.variant}
    print(f"| model | params (M) | multiply-adds at {args.size[0]}x{args.size[1]} (B) |")
    print("|---|---|---|")
    for name, model in models.items():
        print(f"| {name} | {count_params(model) / 1e6:.2f} | {count_macs(model, args.size) / 1e9:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
