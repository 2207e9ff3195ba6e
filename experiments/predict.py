"""Predict segmentation masks with a retrained network.

    python experiments/predict.py --run results/<name> --images photos/ --out predictions/
    python experiments/predict.py --run results/<name>/final/retrain --images a.jpg b.png --out predictions/

``--run`` is a retrain run folder (``checkpoint_epoch<k>/`` inside) or an experiment folder (its
``final/retrain``); its newest checkpoint is used. Images may have any size. For each image ``<name>`` the
output folder gets ``<name>.png`` (a palette PNG of class indices at the image's size) and
``<name>_overlay.png`` (the image blended with the class colours), plus ``legend.json`` and ``legend.png``
(class index, name and colour) and ``predictions.json`` (what was written, pixels per class).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cli import user_errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="retrain run folder or experiment folder (a path or a URI)")
    parser.add_argument("--images", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder (created when missing)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the mask colours in overlays (0.5)")
    parser.add_argument("--device", default=None, help="torch device; default: cuda when available, else cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with user_errors():
        import torch

        from orchestrator.inference import InferenceError, load_run
        from orchestrator.inference.predict import list_images, predict_files
        from orchestrator.io.atomic import write_json

        if not 0.0 <= args.alpha <= 1.0:
            raise InferenceError(f"--alpha {args.alpha}: expected a weight between 0 and 1")
        images = list_images(args.images)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        run = load_run(args.run, device)
        records = predict_files(run, images, args.out, args.alpha, device)
        write_json(Path(args.out) / "predictions.json", {"checkpoint": str(run.checkpoint), "epoch": run.epoch,
                                                         "images": records})
    print(f"{len(records)} image(s) predicted with {run.checkpoint} (epoch {run.epoch}, {len(run.classes)} "
          f"classes) -> {args.out}: <name>.png masks, <name>_overlay.png, legend.json, legend.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
