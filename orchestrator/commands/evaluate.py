"""Score a retrained network: mIoU and per-class IoU on a split of its dataset, single-scale and multi-scale.

    adl evaluate --experiment results/<name>                                # the report split, both protocols
    adl evaluate --experiment results/<name> --role select --single-scale   # the selection split, one scale
    adl evaluate --experiment results/<name> --split val --scales 0.75,1.0,1.25 --no-flip --out /tmp/eval
    adl evaluate --experiment results/cityscapes-<hash> --test-server cityscapes-test/ --multi-scale-test

``--experiment`` is an experiment folder or a retrain run folder, as for ``adl predict``; its newest checkpoint is
used, verified against its manifest and read with ``weights_only=True``. The images are the run config's report
split (the one no search, sweep or selection read; ``--role select``: the selection split; ``--split``: any split
by name; ``--data-root``: the dataset's folder on this machine). Single-scale scores each whole image at its size,
as the retrain's own ``test_miou``; multi-scale averages the logits of the image at scales 0.5 to 1.75 and their
left-right flips, resized back to the image's size. Writes ``evaluation.json`` (mIoU, pixel accuracy, per-class IoU
and the confusion matrix of each protocol) into ``--out`` (default: the retrain run folder).

``--test-server DIR`` instead writes what the Cityscapes test server takes for a cityscapes run: one labelId PNG
per image of ``--split`` (default test), named as the image (``<city>_<seq>_<frame>_leftImg8bit.png``); zip the
folder and upload it. No Ray.
"""

from __future__ import annotations

import argparse

from orchestrator.cli import command_parser, user_errors
from orchestrator.commands.predict import default_device, device_argument, experiment_argument


def float_list(text: str) -> list[float]:
    """``"0.5,1,1.5"`` -> ``[0.5, 1.0, 1.5]`` (an argparse type)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 0.5,1.0,1.5") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one number")
    return values


ROLES = ("report", "select")
"""`orchestrator.inference.evaluate.EVAL_ROLES`, written out so that ``--help`` needs no torch (tests check)."""


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__, prog)
    experiment_argument(parser)
    parser.add_argument("--role", choices=ROLES, default="report",
                        help="the split that plays this role in the run's config")
    parser.add_argument("--split", help="a split of the dataset by name (val, test, ...) instead of --role; with "
                        "--test-server default: test")
    parser.add_argument("--single-scale", action="store_true", help="skip the multi-scale protocol (12x the compute)")
    parser.add_argument("--scales", type=float_list, metavar="S,S,...",
                        help="multi-scale: input scales; default: the paper's 0.5,0.75,1.0,1.25,1.5,1.75")
    parser.add_argument("--no-flip", action="store_true", help="multi-scale: no left-right flipped views")
    parser.add_argument("--out", metavar="DIR", help="folder for evaluation.json; default: the retrain run folder")
    parser.add_argument("--test-server", metavar="DIR",
                        help="write Cityscapes test-server PNGs (labelIds) here instead of scoring")
    parser.add_argument("--multi-scale-test", action="store_true",
                        help="--test-server: predict with the multi-scale protocol (default: single-scale)")
    parser.add_argument("--data-root", metavar="DIR", help="the dataset's folder; default: the run config's data.root")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N images (a quick look); default: all")
    device_argument(parser)
    return parser.parse_args(argv)


def _test_server(args: argparse.Namespace, run) -> str:
    from orchestrator.inference.evaluate import SCALES, write_test_server

    written = write_test_server(run, args.test_server, split=args.split or "test", multi_scale=args.multi_scale_test,
                                scales=args.scales or SCALES, flip=not args.no_flip, data_root=args.data_root,
                                limit=args.limit, log=print)
    return f"{len(written)} labelId PNG(s) for the Cityscapes test server -> {args.test_server}"


def _evaluate(args: argparse.Namespace, run) -> str:
    from orchestrator.inference.evaluate import SCALES, evaluate_run, evaluation_text, write_evaluation

    result = evaluate_run(run, role=args.role, split=args.split, multi_scale=not args.single_scale,
                          scales=args.scales or SCALES, flip=not args.no_flip, data_root=args.data_root,
                          limit=args.limit, log=print)
    written = write_evaluation(result, args.out)
    return evaluation_text(result) + f"\n\nwrote {written}"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``adl evaluate``."""
    args = parse_args(argv, prog)
    with user_errors():
        from orchestrator.inference import find_run_dir, load_run
        from orchestrator.io.storage import check_writable

        if args.test_server:
            check_writable(args.test_server, "--test-server")
        else:
            args.out = args.out or str(find_run_dir(args.experiment))
            check_writable(args.out, "--out")
        run = load_run(args.experiment, default_device(args.device))
        text = _test_server(args, run) if args.test_server else _evaluate(args, run)
    print(text)
    return 0
