"""Data loading at the paper's scale: how many training images per second one loader worker delivers.

    python experiments/benchmarks/bench_data.py                    # 6 generated Cityscapes-format files, 3 rounds
    python experiments/benchmarks/bench_data.py --json --images 4 --rounds 2

Generates Cityscapes-format files in a temporary folder (``leftImg8bit/train/<city>/*_leftImg8bit.png``, 2048x1024
RGB with smooth content, edges and mild noise; ``gtFine/train/<city>/*_gtFine_labelIds.png`` with regions of
Cityscapes label ids) and measures in this process, on one thread (what a DataLoader worker has), interleaved
``--rounds`` times because this machine's speed drifts:

- ``pipeline_images_per_s``: the training pipeline of ``cityscapes.yaml`` as the loader runs it (`load_dataset`:
  decode, check the label, half-resolution scale, 321 crop, flip, normalise), i.e. the fast path
  (`orchestrator.data.fast_crop`);
- ``reference_images_per_s``: the same pipeline through the reference transform (normalise the whole image to
  float, resize all of it, crop);
- ``decode_images_per_s``: bare decoding of the same image and label files: the floor of this pipeline.

With ``--step-seconds`` and ``--batch`` (a GPU step of 0.08 s at batch 2 by default) it says how many loader
workers feed one GPU: ``ceil(batch / step_seconds / pipeline_images_per_s)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

from orchestrator.cli import HelpFormatter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
CITY_IDS = (7, 8, 11, 12, 17, 19, 20, 21, 22, 23, 24, 26, 0)  # road ... car, and 0 (unlabeled: ignore)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "experiments", "configs", "cityscapes.yaml"),
                   help="the config whose data pipeline is measured")
    p.add_argument("--images", type=int, default=6, help="generated image/label pairs")
    p.add_argument("--rounds", type=int, default=3, help="passes over the files per variant, interleaved")
    p.add_argument("--step-seconds", type=float, default=0.08, help="the GPU step the loader must keep up with")
    p.add_argument("--batch", type=int, default=2, help="images per GPU step")
    p.add_argument("--size", default="2048x1024", help="generated image size WxH")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    return p.parse_args(argv)


def make_files(root: str, count: int, width: int, height: int) -> None:
    """``count`` Cityscapes-format pairs under ``root`` (one city, split train)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir = os.path.join(root, "leftImg8bit", "train", "benchcity")
    lab_dir = os.path.join(root, "gtFine", "train", "benchcity")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        label = np.zeros((height, width), np.uint8)
        image = np.stack([xx / width * 180 + 40, yy / height * 160 + 50, (xx + yy) / (width + height) * 120 + 60], -1)
        for _ in range(40):  # rectangles of one class and one colour: edges as in a street scene
            x0, y0 = rng.integers(0, width - 64), rng.integers(0, height - 64)
            x1, y1 = x0 + rng.integers(32, width // 3), y0 + rng.integers(32, height // 3)
            label[y0:y1, x0:x1] = rng.choice(CITY_IDS)
            image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * 0.5 + rng.integers(0, 255, 3) * 0.5
        image += rng.normal(0, 6, image.shape)
        stem = f"benchcity_{i:06d}_000019"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
        Image.fromarray(label).save(os.path.join(lab_dir, f"{stem}_gtFine_labelIds.png"))


def measure(root: str, args: argparse.Namespace) -> dict:
    import torch

    from orchestrator.config import load_config
    from orchestrator.data import load_dataset
    from orchestrator.data.common import open_image, read_label
    from orchestrator.data.transforms import to_tensors

    torch.set_num_threads(1)  # what a DataLoader worker runs with
    cfg = load_config(args.config, [f"data.root={root}"])
    options = {**cfg.data.options, "check_samples": 0}
    ds = load_dataset(cfg.data.dataset, root, "train", train=True, crop_size=cfg.data.crop_size, **options)
    n = len(ds)

    def decode():
        for image_path, label_path in ds.pairs:
            open_image(image_path), read_label(label_path)

    def pipeline():
        for i in range(n):
            ds[i]

    def reference():
        for i in range(n):
            ds.transform(*to_tensors(*ds.load(i)))

    variants = {"pipeline": pipeline, "reference": reference, "decode": decode}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    torch.manual_seed(0)
    pipeline()  # warm the file cache and the allocator
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t0))
    out = {f"{k}_images_per_s": round(statistics.median(v), 2) for k, v in rates.items()}
    out["pipeline_over_decode"] = round(out["pipeline_images_per_s"] / out["decode_images_per_s"], 3)
    out["pipeline_over_reference"] = round(out["pipeline_images_per_s"] / out["reference_images_per_s"], 3)
    need = args.batch / args.step_seconds
    out["gpu_needs_images_per_s"] = round(need, 2)
    out["loader_workers_per_gpu"] = math.ceil(need / out["pipeline_images_per_s"])
    out["config"] = {"config": os.path.relpath(args.config, REPO), "crop_size": cfg.data.crop_size,
                     "options": cfg.data.options, "images": n, "rounds": args.rounds, "size": args.size,
                     "step_seconds": args.step_seconds, "batch": args.batch, "threads": 1}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-data-") as root:
        make_files(root, args.images, width, height)
        out = measure(root, args)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
