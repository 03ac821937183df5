"""``mnasnet weights`` (the registry as a table) and ``mnasnet predict`` (classify images)."""

from __future__ import annotations

import argparse
import json
import sys

from mnasnet.cli.options import add_threads_flag, positive_int


def register(subparsers) -> None:
    weights = subparsers.add_parser(
        "weights",
        help="list the published weights",
        description="List every published MnasNet checkpoint: source, accuracy, size, hash and preprocessing. "
        "Any NAME (or the publisher's own name) works with --weights and create_model(weights=NAME).",
    )
    weights.add_argument("--json", action="store_true", help="print the full registry as JSON")
    weights.set_defaults(func=run_weights)

    predict = subparsers.add_parser(
        "predict",
        help="classify images",
        description="Print the top ImageNet classes of each image, prepared the way the weights were evaluated. "
        "A folder stands for every image in it. Unreadable files are reported on stderr (exit status 1); "
        "the other images are still classified.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    predict.add_argument(
        "--weights", required=True, metavar="NAME|PATH", help="registry name, checkpoint, or exported .onnx/.tflite"
    )
    predict.add_argument("--topk", type=positive_int, default=5, help="classes per image (default: 5)")
    predict.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default: 16)")
    predict.add_argument("--json", action="store_true", help="print one JSON list with an object per image")
    add_threads_flag(predict, "the model (PyTorch, ONNX Runtime or LiteRT)")
    predict.set_defaults(func=run_predict)


def run_weights(args: argparse.Namespace) -> int:
    from mnasnet.weights import list_weights

    entries = list_weights()
    if args.json:
        print(json.dumps([entry.to_dict() for entry in entries], indent=2))
        return 0
    header = ("name", "publisher's name", "top-1", "top-5", "params", "sha256", "preprocessing", "license")
    rows = [
        (
            entry.name,
            f"{entry.source}: {entry.publisher_name}",
            _percent(entry.top1),
            _percent(entry.top5),
            f"{entry.num_params:,}",
            entry.sha256 or "none published",
            entry.preprocess.describe(),
            entry.license,
        )
        for entry in entries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * width for width in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def run_predict(args: argparse.Namespace) -> int:
    from mnasnet.predict import predict_images
    from mnasnet.runtime import load_predictor

    predictor = load_predictor(args.weights)
    results = predict_images(predictor, args.images, topk=args.topk, batch_size=args.batch_size)
    for result in results:
        if result.error is not None:
            print(f"mnasnet predict: error: {result.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    else:
        for result in results:
            if result.top is None:
                continue
            print(result.image)
            for rank, score in enumerate(result.top, start=1):
                label = score.label if score.label is not None else f"class {score.index}"
                print(f"  {rank}. {score.prob:7.2%}  {label} ({score.index})")
    return 1 if any(result.error is not None for result in results) else 0
