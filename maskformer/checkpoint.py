"""The native checkpoint: one .safetensors file whose metadata holds the config and class metadata.

Metadata keys (all strings): ``format`` = "maskformer-studio", ``format_version``, ``config``
(JSON of ``config_to_dict(cfg)``), ``meta`` (JSON of ``DatasetMeta.to_dict()``), ``extra`` (JSON).
Official (.pkl/.pth) and Hugging Face checkpoints are turned into this format by
``maskformer.sources`` (once, cached) or ``python -m maskformer convert``; nothing here reads them.
``load_model`` returns a typed ``LoadedModel`` (model, config, class metadata, load report).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maskformer.config import (
    Config,
    ConfigError,
    DatasetMeta,
    ModelConfig,
    config_from_dict,
    config_to_dict,
)
from maskformer.errors import CheckpointError
from maskformer.partial_load import (
    LoadReport,
    check_shapes_match,
    expected_shapes,
    load_state_dict_partial,
    resize_meta,
)

logger = logging.getLogger(__name__)

FORMAT = "maskformer-studio"
FORMAT_VERSION = 1
CONVERT_HINT = "convert it first: python -m maskformer convert {src} OUT.safetensors"
_FOREIGN_SUFFIXES = (".pkl", ".pth", ".pt", ".bin", ".ckpt", ".pickle")
_MAX_ROWS = 100_000  # a sanity bound on K and Q asked for at load time (COCO has 133, ADE-full 847)

__all__ = [
    "Checkpoint",
    "LoadReport",
    "LoadedModel",
    "load_checkpoint",
    "load_model",
    "load_state_dict_partial",
    "peek_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]


@dataclass
class Checkpoint:
    """A native checkpoint in memory. ``state_dict`` is empty when read with ``peek_checkpoint``;
    ``shapes`` (key -> shape, from the file's header) is always filled."""

    state_dict: dict[str, Tensor]
    cfg: Config
    meta: DatasetMeta
    extra: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# save


def save_checkpoint(
    path: str | Path,
    model_or_state_dict: nn.Module | dict[str, Tensor],
    cfg: Config,
    meta: DatasetMeta,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a native checkpoint atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: the .safetensors file to write; its folder is created if needed.
        model_or_state_dict: a model (its ``state_dict()`` is saved) or a state dict.
        cfg: the full config the weights belong to.
        meta: the class metadata (K entries).
        extra: JSON-serialisable information (training step, source file, ...).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    tensors = _saveable(state)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config_to_dict(cfg)),
        "meta": json.dumps(meta.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name (not mkstemp, which would make the file owner-only) in the same folder.
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _saveable(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors sharing no storage (safetensors refuses shared memory)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        whole = storage.nbytes() == t.numel() * t.element_size()
        if t.numel() == 0 or not whole or storage.data_ptr() in seen:
            t = t.clone()  # a view or a tied weight: give it its own storage
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


# --------------------------------------------------------------------------------------------
# load


def peek_checkpoint(path: str | Path) -> Checkpoint:
    """Read only the config, metadata, extra and tensor shapes of a native checkpoint (no data)."""
    return _read(path, with_tensors=False)


def verify_checkpoint(path: str | Path) -> Checkpoint:
    """``peek_checkpoint``, then check the stored shapes against the file's own config.

    What to call before building a model from a checkpoint's config (``train --init``): nothing the
    header claims is allocated, and a config that disagrees with the tensors is refused.
    """
    head = peek_checkpoint(path)
    check_shapes_match(str(path), head.shapes, head.cfg.model)
    return head


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a native checkpoint onto the CPU.

    Raises:
        CheckpointError: missing file, not a safetensors file, a safetensors file that is not ours
            (e.g. a Hugging Face ``model.safetensors``), an official .pkl/.pth, or broken metadata.
    """
    return _read(path, with_tensors=True)


def _read(path: str | Path, *, with_tensors: bool) -> Checkpoint:
    from safetensors import safe_open

    path = _check_native_path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            _check_header(path, header)
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            names = f.keys() if with_tensors else []
            tensors = {k: f.get_tensor(k) for k in names}
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own type for malformed files
        if _looks_like_torch_or_pickle(path):
            raise _foreign(path) from None
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_first_line(e)})"
        ) from None
    return Checkpoint(tensors, *_parse_header(path, header), shapes=shapes)


def _check_native_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / "config.json").exists():
            raise CheckpointError(
                f"{path} is a Hugging Face model folder, not a native "
                "checkpoint; " + CONVERT_HINT.format(src=path)
            )
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if path.suffix.lower() in _FOREIGN_SUFFIXES:
        raise _foreign(path)
    return path


def _foreign(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} is a PyTorch/detectron2 checkpoint, not a native one; "
        + CONVERT_HINT.format(src=path)
    )


def _looks_like_torch_or_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or (
        head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    )


def _check_header(path: Path, header: dict[str, str]) -> None:
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a MaskFormer Studio checkpoint (no "
            f"'format: {FORMAT}' metadata; a Hugging Face model.safetensors?); convert its folder "
            "first: python -m maskformer convert MODEL_DIR OUT.safetensors"
        )
    try:
        version = int(header.get("format_version", "0"))
    except ValueError:
        version = -1
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {header.get('format_version')!r}; this "
            f"version of MaskFormer Studio reads 1..{FORMAT_VERSION}"
        )


def _parse_header(path: Path, header: dict[str, str]) -> tuple[Config, DatasetMeta, dict[str, Any]]:
    try:
        cfg = config_from_dict(json.loads(header["config"]))
        meta = DatasetMeta.from_dict(json.loads(header["meta"]))
        extra = json.loads(header.get("extra", "{}"))
    except (
        KeyError,
        TypeError,
        ValueError,
        RecursionError,
        ConfigError,
    ) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} has broken config/meta metadata: {_first_line(e)}") from None
    if meta.num_classes != cfg.model.num_classes:
        raise CheckpointError(
            f"{path}: its metadata names {meta.num_classes} classes but its "
            f"config says num_classes={cfg.model.num_classes}"
        )
    return cfg, meta, extra


# --------------------------------------------------------------------------------------------
# load into a model


@dataclass(frozen=True)
class LoadedModel:
    """A model built from a checkpoint, with what it needs to be used and how it was loaded.

    Attributes:
        model: the network, in eval mode, on the device asked for.
        cfg: the config it was built from (K and Q as built, which may differ from the file's).
        meta: its class metadata (K entries).
        report: what the load did, tensor by tensor (``complete`` when K and Q are unchanged).
        path: the native checkpoint file it was read from.
        extra: the file's ``extra`` metadata (training step, source it was converted from, ...).
    """

    model: nn.Module
    cfg: Config
    meta: DatasetMeta
    report: LoadReport
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    num_queries: int | None = None,
    meta: DatasetMeta | None = None,
) -> LoadedModel:
    """Build the model a native checkpoint describes and load its weights.

    The stored tensors are checked against the file's own config before any model is allocated
    (``check_shapes_match``), so a config claiming sizes the tensors do not have is refused cheaply.

    Args:
        path: a native .safetensors checkpoint.
        device: where the model goes.
        num_classes: K for a new class set (default: the checkpoint's, or ``meta``'s when given).
        num_queries: Q (default: the checkpoint's).
        meta: class metadata for the new K (default: the checkpoint's, extended or cut to K).

    Raises:
        CheckpointError: an unreadable or inconsistent file, or ``meta`` disagreeing with K.
    """
    from maskformer.model import build_model

    path = Path(path)
    head = verify_checkpoint(path)
    old = head.cfg.model
    if num_classes is None:
        num_classes = meta.num_classes if meta is not None else old.num_classes
    if meta is not None and meta.num_classes != num_classes:
        raise CheckpointError(
            f"the metadata given names {meta.num_classes} classes but num_classes={num_classes}"
        )
    for name, value in (("num_classes", num_classes), ("num_queries", num_queries)):
        if value is not None and not 1 <= value <= _MAX_ROWS:
            raise CheckpointError(f"{name}={value} is outside 1..{_MAX_ROWS}")
    new = replace(old, num_classes=num_classes, num_queries=num_queries or old.num_queries)
    expected_shapes(new)  # a new K/Q must give a buildable model too, before allocating it
    ckpt = load_checkpoint(path)
    model = build_model(new)
    report = load_state_dict_partial(model, ckpt.state_dict)
    if not report.complete:
        logger.info(
            "loaded %s with K=%d Q=%d: %s", path, new.num_classes, new.num_queries, report.summary()
        )
    return LoadedModel(
        model=model.to(torch.device(device)).eval(),
        cfg=replace(ckpt.cfg, model=new),
        meta=meta if meta is not None else resize_meta(ckpt.meta, num_classes),
        report=report,
        path=path,
        extra=ckpt.extra,
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------
# extended models (maskformer.model.extension)


def extend_checkpoint(
    base_path: str | Path,
    expert_path: str | Path,
    out: str | Path,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the extension of ``base_path`` by ``expert_path`` to ``out`` (atomically).

    ``expert_path`` is a plain model trained from the base with the backbone frozen on the base's
    classes followed by new ones (the fine-tune's output); its pixel decoder and predictor become
    the expert head, its classes and their metadata the extension's. The two paths are kept in
    the file's ``extra`` (with ``extra``).

    Raises:
        CheckpointError: either file is an extension already, the two differ in anything but the
            class count, the expert does not add classes, or its backbone is not the base's.
    """
    base, expert = load_checkpoint(base_path), load_checkpoint(expert_path)
    bm, em = base.cfg.model, expert.cfg.model
    for name, m in ((base_path, bm), (expert_path, em)):
        if m.base_classes:
            raise CheckpointError(f"{name} is an extended model already; give its base model")
    if replace(bm, num_classes=em.num_classes) != em:
        raise CheckpointError(
            f"{expert_path} is not a fine-tune of {base_path}: their models differ in more than "
            "the class count"
        )
    if em.num_classes <= bm.num_classes:
        raise CheckpointError(f"{expert_path} adds no class to the {bm.num_classes} of the base")
    if tuple(expert.meta.class_names[: bm.num_classes]) != tuple(base.meta.class_names):
        raise CheckpointError(f"{expert_path}'s classes do not start with {base_path}'s")
    state = {f"base.{k}": v for k, v in base.state_dict.items()}
    for key, value in expert.state_dict.items():
        if key.startswith("backbone."):
            kept = base.state_dict.get(key)
            if kept is None or not torch.equal(kept, value):
                raise CheckpointError(
                    f"{expert_path}'s backbone differs from the base's ({key}): the expert must "
                    "be trained with solver.freeze=backbone"
                )
        else:
            state[f"expert.{key}"] = value
    model = replace(em, base_classes=bm.num_classes)
    extra = {"base": str(base_path), "expert": str(expert_path), **(extra or {})}
    return save_checkpoint(out, state, replace(expert.cfg, model=model), expert.meta, extra=extra)


def save_base_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write the base model of the extended model at ``path`` as a plain checkpoint to ``out``."""
    ckpt = load_checkpoint(path)
    k = ckpt.cfg.model.base_classes
    if not k:
        raise ValueError(f"{path} is not an extended model")
    state = {key[5:]: v for key, v in ckpt.state_dict.items() if key.startswith("base.")}
    plain = ModelConfig()
    model = replace(
        ckpt.cfg.model,
        num_classes=k,
        base_classes=0,
        expert_threshold=plain.expert_threshold,
        expert_overlap=plain.expert_overlap,
        expert_margin=plain.expert_margin,
        expert_duplicate=plain.expert_duplicate,
    )
    return save_checkpoint(
        out, state, replace(ckpt.cfg, model=model), resize_meta(ckpt.meta, k), extra=ckpt.extra
    )
