"""Export a retrained network to ONNX or TorchScript, with dynamic batch, height and width.

    adl export --experiment results/<name> --format onnx --out-file model.onnx
    adl export --experiment results/<name>/final/retrain --format torchscript --out-file model.pt

``python experiments/export.py`` takes the same arguments (``--run`` and ``--out`` are the old spellings of
``--experiment`` and ``--out-file``). ``--experiment`` is an experiment folder or a retrain run folder, as for
``adl predict``. The exported network takes a normalized N x 3 x H x W float image of any size (ImageNet mean and
std, as in training) and returns N x C x H x W class logits. Before it is kept, the export is run back
(onnxruntime, or TorchScript loaded from the file) on random images of two sizes and compared with PyTorch; over
``--tolerance`` the file is removed and the command fails. ``<out-file>.json`` records the classes and colours,
the normalization and the check. ONNX needs the ``export`` extra: ``pip install -e '.[export]'``. No Ray.
"""

from __future__ import annotations

import argparse

from orchestrator.cli import command_parser, user_errors
from orchestrator.commands.predict import experiment_argument


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 61x45") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive sizes")
    return h, w


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__, prog)
    experiment_argument(parser)
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="export format")
    parser.add_argument("--out-file", "--out", dest="out_file", metavar="FILE", required=True,
                        help="file to write (e.g. model.onnx, model.pt; its folder is created); --out is the old "
                        "spelling")
    parser.add_argument("--check-sizes", nargs="+", type=_size, default=[(61, 45), (100, 77)], metavar="HxW",
                        help="image sizes the export is checked on (default 61x45 100x77)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest max abs logit difference")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``adl export``."""
    args = parse_args(argv, prog)
    with user_errors():
        from orchestrator.inference import load_run
        from orchestrator.inference.export import export_run
        from orchestrator.io.storage import check_writable

        check_writable(args.out_file, "--out-file", file=True)
        run = load_run(args.experiment, "cpu")
        info = export_run(run, args.format, args.out_file, args.check_sizes, args.tolerance)
    for check in info["checks"]:
        h, w = check["size"]
        print(f"check {h}x{w}: max abs diff {check['max_abs_diff']:.3g} (tolerance {args.tolerance:g})")
    print(f"{args.format} export of {run.checkpoint} (epoch {run.epoch}, {len(run.classes)} classes) -> "
          f"{args.out_file} (+ {args.out_file}.json)")
    return 0
