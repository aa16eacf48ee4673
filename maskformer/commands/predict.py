"""``python -m maskformer predict``: run a checkpoint on images and write COCO-format results."""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any

import numpy as np

from maskformer.errors import ImageReadError, UserError
from maskformer.sources import CHECKPOINT_HELP

HELP = (
    "run a checkpoint on images (files, folders or globs) and write COCO-format results "
    "(panoptic PNG + JSON, instance RLE results, or semantic label PNGs) and overlays"
)

TASKS = ("panoptic", "semantic", "instance")
IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help=CHECKPOINT_HELP + "; or an exported .onnx model (run by onnxruntime)",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime"),  # inference.backends.BACKENDS, without importing torch
        help="what runs the network: torch (default), or onnxruntime (the model exported to ONNX "
        "in memory, or an .onnx file; needs requirements-onnx.txt)",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="image files, folders (their images, sorted) or glob patterns",
    )
    parser.add_argument(
        "--task", choices=TASKS, help="default: panoptic for panoptic models, else semantic"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help="panoptic: keep queries whose class probability exceeds P "
        "(default: the checkpoint's object_mask_threshold); instance: "
        "overlays show instances scoring >= P (default 0.5)",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        metavar="F",
        help="panoptic: drop a query keeping less than F of its mask after "
        "overlaps (default: the checkpoint's overlap_threshold)",
    )
    parser.add_argument(
        "--topk",
        type=int,
        metavar="N",
        help="instance: detections per image (default: the checkpoint's)",
    )
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast precision for the forward pass (default fp32)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC weights: faster on CPU, outputs no longer bit-identical across thread counts",
    )
    parser.add_argument("--no-overlay", action="store_true", help="skip <name>_overlay.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def expand_images(patterns: list[str]) -> list[Path]:
    """Files as given, folders as their image files (sorted), globs expanded (sorted)."""
    out: list[Path] = []
    for p in patterns:
        path = Path(p)
        if path.is_dir():
            found = sorted(
                f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise UserError(f"no image files in folder {path}")
            out += found
        elif glob.has_magic(p) and not path.exists():
            found = sorted(Path(f) for f in glob.glob(p, recursive=True) if Path(f).is_file())
            if not found:
                raise UserError(f"no files match {p!r}")
            out += found
        else:
            out.append(path)  # a missing file is reported (and skipped) when it is read
    return out


# Output stems are cut to this many UTF-8 bytes: "<stem>_overlay.png" and its temp file must fit
# the 255-byte file names of common file systems even when the input's name is 255 bytes long.
MAX_STEM_BYTES = 200


def output_names(paths: list[Path]) -> list[str]:
    """Unique output stems: the file stem (cut to MAX_STEM_BYTES), ``_2``, ``_3`` ... on collisions."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.stem.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", "ignore")
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        names.append(stem if n == 1 else f"{stem}_{n}")
    return names


def image_ids(names: list[str]) -> list[int]:
    """COCO-style numeric stems (``000000000139``) keep their id; otherwise 1, 2, 3 ..."""
    if all(n.isdigit() for n in names) and len({int(n) for n in names}) == len(names):
        return [int(n) for n in names]
    return list(range(1, len(names) + 1))


class _Writer:
    """Writes one task's per-image files at once and its JSON files at the end."""

    def __init__(self, args: argparse.Namespace, predictor: Any, task: str) -> None:
        self.out, self.task, self.meta = Path(args.out), task, predictor.meta
        self.args = args
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, pred: Any, image_id: int, name: str, file_name: str) -> None:
        from maskformer.data.coco import image_entry, write_png

        h, w = pred.image.shape[:2]
        self.images.append(image_entry(image_id, file_name, h, w))
        picture = getattr(self, f"_{self.task}")(pred, image_id, name)
        if not self.args.no_overlay:
            write_png(self.out / f"{name}_overlay.png", picture)

    def _panoptic(self, pred: Any, image_id: int, name: str) -> np.ndarray:
        from maskformer.data.coco import id2rgb, panoptic_annotation, write_png
        from maskformer.inference.visualize import BAND_ROWS, render_panoptic

        pan = pred.panoptic(self.args.threshold, self.args.overlap)
        id_map = pan.panoptic_seg.numpy()
        rgb = np.empty((*id_map.shape, 3), np.uint8)
        for y in range(0, len(id_map), BAND_ROWS):  # bounded int64 temporaries on big photos
            rgb[y : y + BAND_ROWS] = id2rgb(id_map[y : y + BAND_ROWS])
        write_png(self.out / "panoptic" / f"{name}.png", rgb)
        del rgb
        ann = panoptic_annotation(id_map, pan.segments, image_id, f"{name}.png", self.meta)
        score = {s["id"]: s["score"] for s in pan.segments}
        for info in ann["segments_info"]:
            info["score"] = round(float(score[info["id"]]), 6)
        self.annotations.append(ann)
        return render_panoptic(pred.image, id_map, pan.segments, self.meta)

    def _instance(self, pred: Any, image_id: int, name: str) -> np.ndarray:
        from maskformer.data.coco import encode_rle, mask_bbox
        from maskformer.inference.visualize import render_instances

        inst = pred.instances(self.args.topk)
        cat_ids = self.meta.category_ids()
        for i, (label, score) in enumerate(zip(inst.labels.tolist(), inst.scores.tolist())):
            mask = np.asarray(inst.masks[i])  # one full-size mask at a time
            self.annotations.append(
                {
                    "image_id": image_id,
                    "category_id": int(cat_ids[label]),
                    "segmentation": encode_rle(mask),
                    "score": round(score, 6),
                    "bbox": mask_bbox(mask),
                }
            )
        shown = 0.5 if self.args.threshold is None else self.args.threshold
        return render_instances(
            pred.image,
            inst.masks,
            inst.labels.tolist(),
            inst.scores.tolist(),
            self.meta,
            score_threshold=shown,
        )

    def _semantic(self, pred: Any, image_id: int, name: str) -> np.ndarray:
        from maskformer.data.coco import write_png
        from maskformer.inference.visualize import render_semantic

        sem = pred.semantic().numpy()
        dtype = np.uint8 if self.meta.num_classes <= 255 else np.uint16
        write_png(self.out / "semantic" / f"{name}.png", sem.astype(dtype, copy=False))
        return render_semantic(pred.image, sem, self.meta)

    def finish(self) -> list[Path]:
        from maskformer.data.coco import categories_from_meta, write_json

        cats = categories_from_meta(self.meta)
        write_json(self.out / "images.json", {"images": self.images, "categories": cats})
        if self.task == "panoptic":
            write_json(
                self.out / "panoptic.json",
                {
                    "info": {"description": "maskformer predictions"},
                    "licenses": [],
                    "images": self.images,
                    "annotations": self.annotations,
                    "categories": cats,
                },
            )
            return [self.out / "panoptic.json", self.out / "panoptic"]
        if self.task == "instance":
            write_json(self.out / "instances_results.json", self.annotations)
            return [self.out / "instances_results.json"]
        return [self.out / "semantic"]


def _progress(items: list, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc="predict", unit="img", disable=disable, file=sys.stderr)


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--threshold", args.threshold), ("--overlap", args.overlap)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} must lie in [0, 1], got {value}")
    if args.topk is not None and args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    paths = expand_images(args.images)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    from maskformer.inference import Predictor

    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        device=args.device,
        dtype=args.dtype,
        channels_last=args.channels_last,
        backend=args.backend,
    )
    task = args.task or ("panoptic" if predictor.cfg.test.panoptic_on else "semantic")
    writer = _Writer(args, predictor, task)
    names = output_names(paths)
    failed = 0
    for path, name, image_id in _progress(
        list(zip(paths, names, image_ids(names))), args.no_progress
    ):
        try:
            pred = predictor.predict(path)
        except ImageReadError as e:
            failed += 1
            _warn(f"skipped: {e}")
            continue
        writer.add(pred, image_id, name, path.name)
        del pred
    written = writer.finish()
    done = len(paths) - failed
    print(f"{task}: {done} image(s) -> {', '.join(str(p) for p in written)}", file=sys.stderr)
    if failed:
        print(f"error: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0
