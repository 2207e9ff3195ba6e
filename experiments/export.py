"""Export a retrained network to ONNX or TorchScript, with dynamic batch, height and width.

    python experiments/export.py --run results/<name> --format onnx --out model.onnx
    python experiments/export.py --run results/<name>/final/retrain --format torchscript --out model.pt

``--run`` is a retrain run folder or an experiment folder, as for ``predict.py``. The exported network takes
a normalized N x 3 x H x W float image of any size (ImageNet mean and std, as in training) and returns N x C x
H x W class logits. Before it is kept, the export is run back (onnxruntime, or TorchScript loaded from the file)
on random images of two sizes and compared with PyTorch; over ``--tolerance`` the file is removed and the
command fails. ``<out>.json`` records the classes and colours, the normalization and the check. ONNX needs the
``export`` extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.cli import user_errors


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 61x45") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive sizes")
    return h, w


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="retrain run folder or experiment folder (a path or a URI)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="export format")
    parser.add_argument("--out", required=True, help="file to write (e.g. model.onnx, model.pt)")
    parser.add_argument("--check-sizes", nargs="+", type=_size, default=[(61, 45), (100, 77)], metavar="HxW",
                        help="image sizes the export is checked on (default 61x45 100x77)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest max abs logit difference (1e-3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        from orchestrator.inference import load_run
        from orchestrator.inference.export import export_run

        run = load_run(args.run, "cpu")
        info = export_run(run, args.format, args.out, args.check_sizes, args.tolerance)
    for check in info["checks"]:
        h, w = check["size"]
        print(f"check {h}x{w}: max abs diff {check['max_abs_diff']:.3g} (tolerance {args.tolerance:g})")
    print(f"{args.format} export of {run.checkpoint} (epoch {run.epoch}, {len(run.classes)} classes) -> "
          f"{args.out} (+ {args.out}.json)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
