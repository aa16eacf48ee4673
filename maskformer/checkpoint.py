"""The native checkpoint: one .safetensors file whose metadata holds the config and class metadata.

Metadata keys (all strings): ``format`` = "maskformer-studio", ``format_version``, ``config``
(JSON of ``config_to_dict(cfg)``), ``meta`` (JSON of ``DatasetMeta.to_dict()``), ``extra`` (JSON).
Official (.pkl/.pth) and Hugging Face checkpoints are turned into this format by
``python -m maskformer convert``; nothing here reads them.
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
    default_colors,
)
from maskformer.errors import CheckpointError

logger = logging.getLogger(__name__)

FORMAT = "maskformer-studio"
FORMAT_VERSION = 1
CONVERT_HINT = "convert it first: python -m maskformer convert {src} OUT.safetensors"
_FOREIGN_SUFFIXES = (".pkl", ".pth", ".pt", ".bin", ".ckpt", ".pickle")
# Buffers computed from the config (not learned): tolerated when absent from / extra in a file.
_DERIVED_BUFFERS = ("relative_position_index", "attn_mask")
_CLASS_KEYS = ("class_embed.weight", "class_embed.bias")  # (K+1, D), (K+1,); row K = no object
_QUERY_KEYS = ("query_embed.weight", "query_feat.weight")  # (Q, D)


@dataclass
class Checkpoint:
    """A native checkpoint in memory. ``state_dict`` is empty when read with ``peek_checkpoint``."""

    state_dict: dict[str, Tensor]
    cfg: Config
    meta: DatasetMeta
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What a partial load did.

    Attributes:
        missing: model keys the state dict lacks (left as initialised).
        unexpected: state-dict keys the model does not have (ignored).
        reinitialised: model keys whose values are not (entirely) from the state dict because
            the shapes differ; class/query embeddings may still keep leading rows (kept_rows).
        kept_rows: key -> number of leading rows copied from the state dict (class_embed also keeps
            its no-object row, moved to the new last index).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    kept_rows: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every model tensor came unchanged from the state dict and none was left."""
        return not (self.missing or self.unexpected or self.reinitialised)

    def summary(self) -> str:
        parts = []
        for name in ("missing", "unexpected", "reinitialised"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name} ({_few(keys)})")
        if self.kept_rows:
            parts.append("kept rows: " + ", ".join(f"{k}[:{n}]" for k, n in self.kept_rows.items()))
        return "; ".join(parts) or "all tensors loaded"


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
    """Read only the config, metadata and extra of a native checkpoint (no tensors)."""
    return _read(path, with_tensors=False)


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
    return Checkpoint(tensors, *_parse_header(path, header))


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
    except (KeyError, TypeError, ValueError, ConfigError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} has broken config/meta metadata: {_first_line(e)}") from None
    if meta.num_classes != cfg.model.num_classes:
        raise CheckpointError(
            f"{path}: its metadata names {meta.num_classes} classes but its "
            f"config says num_classes={cfg.model.num_classes}"
        )
    return cfg, meta, extra


# --------------------------------------------------------------------------------------------
# load into a model


def load_state_dict_partial(model: nn.Module, state_dict: dict[str, Tensor]) -> LoadReport:
    """Load every tensor whose key and shape fit; keep the model's fresh values for the rest.

    Class and query embeddings whose row count differs keep their overlapping leading rows; for
    ``class_embed`` the no-object row (the last) is moved to the new last index, so a model
    fine-tuned on more (or fewer) classes starts from the old classifier.
    """
    own = model.state_dict()
    report = LoadReport(unexpected=[k for k in state_dict if k not in own])
    merged: dict[str, Tensor] = {}
    for key, target in own.items():
        if key not in state_dict:
            report.missing.append(key)
            continue
        src = state_dict[key].to(dtype=target.dtype, device=target.device)
        if src.shape == target.shape:
            merged[key] = src
            continue
        report.reinitialised.append(key)
        same_tail = src.dim() == target.dim() and src.shape[1:] == target.shape[1:]
        if same_tail and key.endswith(_CLASS_KEYS):
            merged[key], report.kept_rows[key] = _resize_class_rows(src, target)
        elif same_tail and key.endswith(_QUERY_KEYS):
            n = min(src.shape[0], target.shape[0])
            merged[key] = torch.cat([src[:n], target[n:]])
            report.kept_rows[key] = n
    model.load_state_dict(merged, strict=False)
    return report


def _resize_class_rows(src: Tensor, target: Tensor) -> tuple[Tensor, int]:
    """Rows 0..n-1 from src, the no-object row src[-1] at target's last index, the rest from target.

    Args: src (K_old+1, ...), target (K_new+1, ...). Returns the merged (K_new+1, ...) tensor and n.
    """
    n = min(src.shape[0], target.shape[0]) - 1
    out = target.clone()
    out[:n] = src[:n]
    out[-1] = src[-1]
    return out, n


def load_model_with_report(
    path: str | Path,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    num_queries: int | None = None,
    meta: DatasetMeta | None = None,
) -> tuple[nn.Module, LoadReport]:
    """Build the model a native checkpoint describes and load its weights.

    Args:
        path: a native .safetensors checkpoint.
        device: where the model goes.
        num_classes: K for a new class set (default: the checkpoint's, or ``meta``'s when given).
        num_queries: Q (default: the checkpoint's).
        meta: class metadata for the new K (default: the checkpoint's, extended or cut to K).

    Returns:
        The model in eval mode, with ``model.cfg`` (the config it was built from, K and Q included)
        and ``model.meta`` set, and the LoadReport (``complete`` when K and Q are unchanged).
    """
    from maskformer.model import build_model

    ckpt = load_checkpoint(path)
    old = ckpt.cfg.model
    if num_classes is None:
        num_classes = meta.num_classes if meta is not None else old.num_classes
    if meta is not None and meta.num_classes != num_classes:
        raise CheckpointError(
            f"the metadata given names {meta.num_classes} classes but num_classes={num_classes}"
        )
    new = replace(old, num_classes=num_classes, num_queries=num_queries or old.num_queries)
    try:
        model = build_model(new)
    except ConfigError as e:
        raise CheckpointError(f"{path}: cannot build the model its config describes: {e}") from None
    _check_against_config(Path(path), ckpt.state_dict, model.state_dict(), old, new)
    report = load_state_dict_partial(model, ckpt.state_dict)
    report.missing = [k for k in report.missing if not k.endswith(_DERIVED_BUFFERS)]
    report.unexpected = [k for k in report.unexpected if not k.endswith(_DERIVED_BUFFERS)]
    if not report.complete:
        logger.info(
            "loaded %s with K=%d Q=%d: %s", path, new.num_classes, new.num_queries, report.summary()
        )
    model.cfg = replace(ckpt.cfg, model=new)
    model.meta = meta if meta is not None else _resize_meta(ckpt.meta, num_classes)
    return model.to(torch.device(device)).eval(), report


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    num_queries: int | None = None,
    meta: DatasetMeta | None = None,
) -> nn.Module:
    """``load_model_with_report`` without the report (which is logged when not complete)."""
    return load_model_with_report(path, device, num_classes, num_queries, meta)[0]


def _check_against_config(
    path: Path,
    state: dict[str, Tensor],
    built: dict[str, Tensor],
    old: ModelConfig,
    new: ModelConfig,
) -> None:
    """Raise unless the stored tensors are exactly what the checkpoint's own config describes."""

    def expected(key: str, t: Tensor) -> tuple[int, ...]:
        shape = tuple(t.shape)
        if key.endswith(_CLASS_KEYS) and shape[0] == new.num_classes + 1:
            return (old.num_classes + 1,) + shape[1:]
        if key.endswith(_QUERY_KEYS) and shape[0] == new.num_queries:
            return (old.num_queries,) + shape[1:]
        return shape

    wrong = [
        f"{k} {tuple(state[k].shape)} vs {expected(k, t)}"
        for k, t in built.items()
        if k in state and tuple(state[k].shape) != expected(k, t)
    ]
    missing = [k for k in built if k not in state and not k.endswith(_DERIVED_BUFFERS)]
    extra = [k for k in state if k not in built and not k.endswith(_DERIVED_BUFFERS)]
    problems = [
        f"{len(v)} {name} ({_few(v)})"
        for name, v in (("with wrong shapes", wrong), ("missing", missing), ("unknown", extra))
        if v
    ]
    if problems:
        raise CheckpointError(
            f"{path} does not match its own config (backbone={old.backbone}, "
            f"K={old.num_classes}, Q={old.num_queries}): tensors " + "; ".join(problems)
        )


def _resize_meta(meta: DatasetMeta, k: int) -> DatasetMeta:
    """Cut the metadata to K classes, or extend it with generic names ("class_<i>")."""
    n = min(k, meta.num_classes)
    if k == meta.num_classes:
        return meta
    ids = ()
    if meta.dataset_ids:
        start = max(meta.dataset_ids[:n], default=-1) + 1
        ids = meta.dataset_ids[:n] + tuple(range(start, start + k - n))
    return DatasetMeta(
        class_names=meta.class_names[:n] + tuple(f"class_{i}" for i in range(n, k)),
        isthing=meta.isthing[:n] + (False,) * (k - n),
        colors=meta.colors[:n] + default_colors(k)[n:],
        dataset_ids=ids,
        ignore_label=meta.ignore_label,
        name=meta.name if k <= meta.num_classes else "",
    )


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
