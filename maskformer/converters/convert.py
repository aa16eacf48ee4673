"""Official .pkl/.pth or Hugging Face MaskFormer folder -> one native checkpoint file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maskformer.errors import CheckpointError

DATASETS = ("ade20k_150", "coco_panoptic_133", "coco_stuff_171", "cityscapes_19")


@dataclass(frozen=True)
class ConvertResult:
    """What ``convert`` wrote."""

    out: Path
    source_kind: str  # "official" | "hf"
    backbone: str
    num_classes: int
    num_queries: int
    num_params: int
    dataset: str  # metadata name, or "" for generic / HF names

    def summary(self) -> str:
        fallback = "names from the source" if self.source_kind == "hf" else "generic names"
        names = self.dataset or fallback
        return (
            f"wrote {self.out}: MaskFormer {self.backbone}, K={self.num_classes}, "
            f"Q={self.num_queries}, {self.num_params / 1e6:.1f}M params "
            f"(from {self.source_kind}; classes: {names})"
        )


def convert(
    src: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    preset: str | None = None,
    source: str | None = None,
) -> ConvertResult:
    """Convert ``src`` into a native checkpoint at ``out``; the weights are checked by loading them.

    ``source`` is what to record as the origin (default ``src``; a hub id for a hub snapshot).

    Raises:
        CheckpointError: unreadable or unsafe input, unknown layout, or weights that do not fit.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise CheckpointError(f"not found: {src}")
    if src.resolve() == out.resolve():
        raise CheckpointError(f"OUT must differ from SRC ({src})")
    if src.is_dir():
        kind, state, cfg, meta = "hf", *_read_hf(src, dataset)
        if preset is not None:
            raise CheckpointError(
                "--preset applies to official files; a Hugging Face folder's "
                "config.json already describes the model"
            )
    else:
        kind, state, cfg, meta = "official", *_read_official(src, dataset, preset)
    # Imported only now, so that a bad input is reported before timm and the model code load.
    from maskformer.checkpoint import save_checkpoint
    from maskformer.converters.official import match_to_model
    from maskformer.model import build_model

    model = build_model(cfg.model)
    model.load_state_dict(match_to_model(state, model.state_dict(), str(src)))
    save_checkpoint(
        out, model, cfg, meta, extra={"converted_from": source or str(src), "source_kind": kind}
    )
    return ConvertResult(
        out=out,
        source_kind=kind,
        backbone=cfg.model.backbone,
        num_classes=cfg.model.num_classes,
        num_queries=cfg.model.num_queries,
        num_params=sum(p.numel() for p in model.parameters()),
        dataset=meta.name,
    )


def _read_official(src: Path, dataset: str | None, preset: str | None):
    from maskformer.converters.official import read_and_rename

    if src.suffix.lower() == ".safetensors":
        raise CheckpointError(
            f"{src} is a .safetensors file: a native checkpoint needs no "
            "conversion, and a Hugging Face one must be given as its folder "
            "(with config.json)"
        )
    state, cfg = read_and_rename(src, preset=preset)
    return state, cfg, _metadata(dataset, cfg.model.num_classes)


def _read_hf(src: Path, dataset: str | None):
    from maskformer.converters import hf

    hf_state, hf_config = hf.read_hf_directory(src)
    state, cfg = hf.convert_hf_state_dict(hf_state, hf_config)
    _, hf_meta = hf.config_from_hf(hf_config, num_classes=cfg.model.num_classes)
    if dataset is not None:
        return state, cfg, _metadata(dataset, cfg.model.num_classes)
    return state, cfg, prefer_shipped(hf_meta)


def _metadata(dataset: str | None, k: int):
    from maskformer.metadata import get_metadata, infer_metadata

    if dataset is None:
        return infer_metadata(k)
    meta = get_metadata(dataset)
    if meta.num_classes != k:
        raise CheckpointError(
            f"--dataset {dataset} has {meta.num_classes} classes but the checkpoint has {k}"
        )
    return meta


def prefer_shipped(hf_meta):
    """The shipped metadata (with thing/stuff flags) when most HF class names agree with it.

    HF configs name the classes but do not say which are things, which panoptic inference needs.
    """
    from maskformer.metadata import infer_metadata

    shipped = infer_metadata(hf_meta.num_classes)
    if not shipped.name:
        return hf_meta
    same = sum(
        a.strip().lower() == b.strip().lower()
        for a, b in zip(hf_meta.class_names, shipped.class_names)
    )
    return shipped if same >= hf_meta.num_classes / 2 else hf_meta
