"""``python -m maskformer convert``: official .pkl/.pth or HF folder -> native checkpoint."""

from __future__ import annotations

import argparse

from maskformer.converters.convert import DATASETS, convert

HELP = (
    "convert an official MaskFormer .pkl/.pth or a Hugging Face MaskFormer folder into a "
    "native .safetensors checkpoint"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        metavar="SRC",
        help="an official model-zoo .pkl / trained .pth, or a Hugging Face folder "
        "holding config.json and model.safetensors",
    )
    parser.add_argument("out", metavar="OUT", help="the native checkpoint to write (.safetensors)")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="class names/colours to store (default: chosen by the class count)",
    )
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="force this preset's model config instead of inferring it from the "
        "weights (official files only)",
    )


def run(args: argparse.Namespace) -> int:
    result = convert(args.src, args.out, dataset=args.dataset, preset=args.preset)
    print(result.summary())
    return 0
