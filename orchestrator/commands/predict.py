"""Predict segmentation masks with a retrained network.

    adl predict --experiment results/<name> --images photos/ --out predictions/
    adl predict --experiment results/<name>/final/retrain --images a.jpg b.png --out predictions/ --device cpu

``python experiments/predict.py`` takes the same arguments (``--run`` is the old spelling of ``--experiment``).
``--experiment`` is an experiment folder (its ``final/retrain``) or a retrain run folder (``checkpoint_epoch<k>/``
inside); its newest checkpoint is used, verified against its manifest. Images may have any size. For each image
``<name>`` the output folder gets ``<name>.png`` (a palette PNG of class indices at the image's size) and
``<name>_overlay.png`` (the image blended with the class colours), plus ``legend.json`` and ``legend.png`` (class
index, name and colour) and ``predictions.json`` (what was written, pixels per class). No Ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.cli import command_parser, user_errors

EXPERIMENT_HELP = ("experiment folder, or a retrain run folder such as <experiment>/final/retrain (a path or a URI); "
                   "--run is the old spelling")


def experiment_argument(parser: argparse.ArgumentParser) -> None:
    """``--experiment DIR`` (alias ``--run``): the folder of the retrained network to use."""
    parser.add_argument("--experiment", "--run", dest="experiment", metavar="DIR", required=True, help=EXPERIMENT_HELP)


def device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device; default: cuda when available, else cpu")


def default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__, prog)
    experiment_argument(parser)
    parser.add_argument("--images", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--out", metavar="DIR", required=True, help="output folder (created when missing)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the mask colours in overlays")
    device_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``adl predict``."""
    args = parse_args(argv, prog)
    with user_errors():
        from orchestrator.inference import InferenceError, load_run
        from orchestrator.inference.predict import list_images, predict_files
        from orchestrator.io.atomic import write_json
        from orchestrator.io.storage import check_writable

        if not 0.0 <= args.alpha <= 1.0:
            raise InferenceError(f"--alpha {args.alpha}: expected a weight between 0 and 1")
        images = list_images(args.images)
        check_writable(args.out, "--out")
        device = default_device(args.device)
        run = load_run(args.experiment, device)
        records = predict_files(run, images, args.out, args.alpha, device)
        write_json(Path(args.out) / "predictions.json", {"checkpoint": str(run.checkpoint), "epoch": run.epoch,
                                                         "images": records})
    print(f"{len(records)} image(s) predicted with {run.checkpoint} (epoch {run.epoch}, {len(run.classes)} "
          f"classes) -> {args.out}: <name>.png masks, <name>_overlay.png, legend.json, legend.png")
    return 0
