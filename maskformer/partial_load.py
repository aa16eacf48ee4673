"""Fitting stored tensors to a model: shape checks before anything is allocated, partial loads.

A checkpoint's config says which model its tensors belong to. ``expected_shapes`` builds that model
on PyTorch's ``meta`` device (shapes only, no memory), so a file whose config claims an absurd size
is refused before a single large tensor exists; ``load_state_dict_partial`` then copies what fits
and reports, tensor by tensor, what it could not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from maskformer.config import ConfigError, DatasetMeta, ModelConfig, default_colors
from maskformer.errors import CheckpointError

# Buffers computed from the config (not learned): tolerated when absent from / extra in a file.
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")
_CLASS_KEYS = ("class_embed.weight", "class_embed.bias")  # (K+1, D), (K+1,); row K = no object
_QUERY_KEYS = ("query_embed.weight", "query_feat.weight")  # (Q, D)

Shapes = dict[str, tuple[int, ...]]


@dataclass
class LoadReport:
    """What loading a state dict into a model did, tensor by tensor.

    Attributes:
        missing: model keys the state dict lacks (left as initialised).
        unexpected: state-dict keys the model does not have (ignored).
        reinitialised: model keys whose values are not (entirely) from the state dict because
            the shapes differ; class/query embeddings may still keep leading rows (kept_rows).
        kept_rows: key -> number of leading rows copied from the state dict (class_embed also keeps
            its no-object row, moved to the new last index).
        shapes: key -> (stored shape, model shape) for every re-initialised key.
        loaded: number of model tensors copied unchanged from the state dict.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    kept_rows: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    loaded: int = 0

    @property
    def complete(self) -> bool:
        """True when every model tensor came unchanged from the state dict and none was left."""
        return not (self.missing or self.unexpected or self.reinitialised)

    def summary(self) -> str:
        """One line: counts and the first few names of what did not load unchanged."""
        parts = [f"{self.loaded} tensors loaded"]
        if self.reinitialised:
            shown = [f"{k} {_shape(self.shapes.get(k))}" for k in self.reinitialised]
            parts.append(f"{len(shown)} re-initialised (shapes differ: {few(shown)})")
        for name in ("missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{len(keys)} {name} ({few(keys)})")
        if self.kept_rows:
            parts.append("kept rows: " + ", ".join(f"{k}[:{n}]" for k, n in self.kept_rows.items()))
        return "; ".join(parts)


def _shape(pair: tuple[tuple[int, ...], tuple[int, ...]] | None) -> str:
    if pair is None:
        return ""
    src, dst = pair
    return f"{list(src)} -> {list(dst)}"


# --------------------------------------------------------------------------------------------
# shapes before allocation


@functools.lru_cache(maxsize=8)
def _expected_shapes_cached(model_cfg: ModelConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from maskformer.model import build_model

    with torch.device("meta"):  # parameters get shapes and dtypes but no storage
        model = build_model(model_cfg)
    return tuple((k, tuple(t.shape)) for k, t in model.state_dict().items())


def expected_shapes(model_cfg: ModelConfig) -> Shapes:
    """key -> shape of every tensor ``build_model(model_cfg)`` has, computed without allocating.

    Raises:
        CheckpointError: the config describes no model we can build.
    """
    try:
        return dict(_expected_shapes_cached(model_cfg))
    except (ConfigError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"cannot build the model its config describes: {e}") from None


def check_shapes_match(source: str, stored: Shapes, model_cfg: ModelConfig) -> None:
    """Raise unless ``stored`` holds exactly the tensors ``model_cfg``'s model has, shape for shape.

    Called before the model is built for real, so a config claiming 10^7 queries (or any other size
    the stored tensors do not have) is refused without allocating it.
    """
    _check_depth(source, stored, model_cfg)
    want = expected_shapes(model_cfg)
    wrong = [
        f"{k} {list(stored[k])} vs {list(s)}"
        for k, s in want.items()
        if k in stored and stored[k] != s
    ]
    missing = [k for k in want if k not in stored and not k.endswith(DERIVED_BUFFERS)]
    extra = [k for k in stored if k not in want and not k.endswith(DERIVED_BUFFERS)]
    problems = [
        f"{len(v)} {name} ({few(v)})"
        for name, v in (("with wrong shapes", wrong), ("missing", missing), ("unknown", extra))
        if v
    ]
    if problems:
        m = model_cfg
        raise CheckpointError(
            f"{source} does not match its own config (backbone={m.backbone}, "
            f"K={m.num_classes}, Q={m.num_queries}): tensors " + "; ".join(problems)
        )


def _check_depth(source: str, stored: Shapes, m: ModelConfig) -> None:
    """Refuse layer counts the file cannot hold before building (building 10^7 layers, even on the
    meta device, would take hours): every layer stores at least one tensor."""
    layers = m.dec_layers + m.enc_layers + (sum(m.swin_depths) if m.backbone == "swin" else 0)
    if layers > len(stored):
        raise CheckpointError(
            f"{source} does not match its own config: it claims {layers} transformer layers "
            f"but stores only {len(stored)} tensors"
        )


# --------------------------------------------------------------------------------------------
# partial loads


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
            report.loaded += 1
            continue
        report.reinitialised.append(key)
        report.shapes[key] = (tuple(src.shape), tuple(target.shape))
        same_tail = src.dim() == target.dim() and src.shape[1:] == target.shape[1:]
        if same_tail and key.endswith(_CLASS_KEYS):
            merged[key], report.kept_rows[key] = _resize_class_rows(src, target)
        elif same_tail and key.endswith(_QUERY_KEYS):
            n = min(src.shape[0], target.shape[0])
            merged[key] = torch.cat([src[:n], target[n:]])
            report.kept_rows[key] = n
    model.load_state_dict(merged, strict=False)
    report.missing = [k for k in report.missing if not k.endswith(DERIVED_BUFFERS)]
    report.unexpected = [k for k in report.unexpected if not k.endswith(DERIVED_BUFFERS)]
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


def resize_meta(meta: DatasetMeta, k: int) -> DatasetMeta:
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


def few(keys: list[str], n: int = 3) -> str:
    """The first ``n`` items and how many more."""
    return ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "")
