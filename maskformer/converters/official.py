"""Official (facebookresearch/MaskFormer, detectron2) checkpoints -> our state dict and config.

Key rules (see MASKFORMER_REFERENCE.md section 6):
- ``sem_seg_head.`` is dropped; old-layout pixel-decoder keys directly under it (including the
  "+N Enc" ``transformer.encoder`` and ``input_proj``) get ``pixel_decoder.`` inserted.
- detectron2 ResNet names become timm names under ``backbone.body.``; the DeepLab stem of R101c
  becomes timm ``resnet101s``'s ``conv1.{0,1,3,4,6}`` / ``bn1``. Swin keys are kept.
- ``criterion.empty_weight`` and ``pixel_mean``/``pixel_std`` are dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskformer.config import SWIN_VARIANTS, Config, ConfigError, get_preset
from maskformer.converters.safe_pickle import load_weights_file
from maskformer.errors import CheckpointError

_DROP_KEYS = ("criterion.empty_weight", "pixel_mean", "pixel_std")
# Source keys we may drop and model keys we may fill from the model's own initialisation: neither
# is learned (BN step counters, Swin's relative-position lookup table and cached attention mask).
_DERIVED = ("num_batches_tracked", "relative_position_index", "attn_mask")

# (block type, blocks per stage, deep stem) -> our backbone name
_RESNETS = {
    ("bottleneck", (3, 4, 6, 3), False): "resnet50",
    ("bottleneck", (3, 4, 23, 3), False): "resnet101",
    ("bottleneck", (3, 4, 23, 3), True): "resnet101c",
    ("bottleneck", (3, 8, 36, 3), False): "resnet152",
    ("basic", (2, 2, 2, 2), False): "resnet18",
    ("basic", (3, 4, 6, 3), False): "resnet34",
}

# detectron2 DeepLab stem -> timm deep stem (Sequential conv,bn,relu,conv,bn,relu,conv) + bn1.
# Each ".norm" entry comes before its conv so that the longer prefix matches first.
_DEEP_STEM = {
    "stem.conv1.norm": "conv1.1",
    "stem.conv1": "conv1.0",
    "stem.conv2.norm": "conv1.4",
    "stem.conv2": "conv1.3",
    "stem.conv3.norm": "bn1",
    "stem.conv3": "conv1.6",
}


# --------------------------------------------------------------------------------------------
# reading


def read_official_file(path: str | Path) -> dict[str, Tensor]:
    """The model state dict of an official .pkl (numpy values) or .pth file, as CPU tensors.

    Accepts ``{"model": {...}, ...}`` (detectron2), ``{"state_dict": {...}}`` or a bare state dict;
    a ``module.`` prefix on every key (DistributedDataParallel) is removed.
    """
    obj = load_weights_file(path)
    state = obj
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                state = obj[wrapper]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(
            f"{path} holds no model weights (expected a dict with a 'model' entry)"
        )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} of the model weights is a "
                f"{type(value).__name__}, not an array"
            )
        out[key] = value
    if all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


# --------------------------------------------------------------------------------------------
# renaming


def rename_official_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official / detectron2 key names -> ours. Unknown keys pass through unchanged."""
    deep_stem = any(k.startswith("backbone.stem.conv2.") for k in state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _DROP_KEYS or key.rsplit(".", 1)[-1] in _DROP_KEYS:
            continue
        out[_rename(key, deep_stem)] = value
    return out


def _rename(key: str, deep_stem: bool) -> str:
    if key.startswith("sem_seg_head."):
        key = key[len("sem_seg_head.") :]
        if not key.startswith(("predictor.", "pixel_decoder.")):  # the pre-v2 layout
            key = "pixel_decoder." + key
        return key
    if key.startswith(("backbone.stem.", "backbone.res")):
        return "backbone.body." + _resnet_d2_to_timm(key[len("backbone.") :], deep_stem)
    return key


def _resnet_d2_to_timm(key: str, deep_stem: bool) -> str:
    """detectron2 ResNet key -> timm (``res3.0.shortcut`` -> ``layer2.0.downsample.0``).

    Keys are relative to ``backbone.``.
    """
    if key.startswith("stem."):
        if deep_stem:
            for d2, timm_name in _DEEP_STEM.items():
                if key.startswith(d2 + "."):
                    return timm_name + key[len(d2) :]
            return key
        return key.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
    m = re.match(r"res(\d)\.(\d+)\.(.*)$", key)
    if not m:
        return key
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    rest = rest.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    return f"layer{stage - 1}.{block}.{rest}"


# --------------------------------------------------------------------------------------------
# config inference


def infer_config(state: dict[str, Tensor]) -> Config:
    """The config an (already renamed) state dict was built from, read off key names and shapes.

    The number of attention heads is not visible in the shapes; the official value 8 is used (all
    released models). Dataset-level settings (test sizes, thresholds, padding) come from the preset
    whose class count matches.
    """
    need = (
        "predictor.query_embed.weight",
        "predictor.class_embed.weight",
        "pixel_decoder.mask_features.weight",
    )
    absent = [k for k in need if k not in state]
    if absent:
        raise CheckpointError(
            f"this is not a MaskFormer checkpoint: it has no {', '.join(absent)} "
            f"(first keys: {', '.join(list(state)[:3])})"
        )
    try:
        model = _infer_model_fields(state)
    except KeyError as e:
        raise CheckpointError(
            f"cannot infer the model: the weights have no {e.args[0]}; pass --preset"
        ) from None
    base = get_preset(_base_preset(model))
    # A predictor input_proj that would exist anyway (res5 != hidden): keep the preset's flag.
    model["enforce_input_proj"] |= (
        "predictor.input_proj.weight" in state and base.model.enforce_input_proj
    )
    return replace(base, model=replace(base.model, **model))


def _infer_model_fields(state: dict[str, Tensor]) -> dict[str, Any]:
    num_queries, hidden = state["predictor.query_embed.weight"].shape
    return dict(
        num_classes=state["predictor.class_embed.weight"].shape[0] - 1,
        num_queries=num_queries,
        hidden_dim=hidden,
        num_heads=8,
        dim_feedforward=state["predictor.transformer.decoder.layers.0.linear1.weight"].shape[0],
        dec_layers=_count(state, "predictor.transformer.decoder.layers."),
        conv_dim=state["pixel_decoder.layer_1.weight"].shape[0],
        mask_dim=state["pixel_decoder.mask_features.weight"].shape[0],
        **_infer_backbone(state),
        **_infer_head_input(state, hidden),
    )


def _infer_head_input(state: dict[str, Tensor], hidden: int) -> dict[str, Any]:
    enc = _count(state, "pixel_decoder.transformer.encoder.layers.")
    proj = state.get("predictor.input_proj.weight")
    conv_dim = state["pixel_decoder.layer_1.weight"].shape[0]
    # With the encoder, the official "+N Enc" models feed its conv_dim output to the predictor.
    from_encoder = enc > 0 and (proj is None or proj.shape[1] == conv_dim)
    return {
        "enc_layers": enc,
        "transformer_in_feature": "transformer_encoder" if from_encoder else "res5",
        "enforce_input_proj": proj is not None and proj.shape[1] == hidden,
    }


def _infer_backbone(state: dict[str, Tensor]) -> dict[str, Any]:
    if "backbone.patch_embed.proj.weight" in state:
        return _infer_swin(state)
    if "backbone.body.layer1.0.conv1.weight" not in state:
        raise CheckpointError(
            "cannot tell the backbone: neither detectron2 ResNet nor Swin keys found; pass --preset"
        )
    block = "bottleneck" if "backbone.body.layer1.0.conv3.weight" in state else "basic"
    depths = tuple(_count(state, f"backbone.body.layer{i}.") for i in range(1, 5))
    deep = "backbone.body.conv1.0.weight" in state
    name = _RESNETS.get((block, depths, deep))
    if name is None:
        raise CheckpointError(
            f"unknown ResNet layout ({block} blocks {depths}, deep stem: {deep}); pass --preset"
        )
    frozen = not any(k.endswith("num_batches_tracked") for k in state)
    return {"backbone": name, "frozen_bn": frozen}


def _infer_swin(state: dict[str, Tensor]) -> dict[str, Any]:
    embed = state["backbone.patch_embed.proj.weight"].shape[0]
    stages = _count(state, "backbone.layers.")
    depths = tuple(_count(state, f"backbone.layers.{i}.blocks.") for i in range(stages))
    tables = [
        state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"]
        for i in range(stages)
    ]
    heads = tuple(t.shape[1] for t in tables)
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2  # the table has (2w-1)^2 rows
    found = {
        "swin_embed_dim": embed,
        "swin_depths": depths,
        "swin_num_heads": heads,
        "swin_window_size": window,
    }
    pretrain = next(
        (
            v["swin_pretrain_img_size"]
            for v in SWIN_VARIANTS.values()
            if all(v[k] == found[k] for k in found)
        ),
        224 if window == 7 else 384,
    )
    return {"backbone": "swin", "swin_pretrain_img_size": pretrain, **found}


def _base_preset(model: dict[str, Any]) -> str:
    """The preset for the dataset-level settings, chosen by class count (and encoder / window)."""
    k = model["num_classes"]
    if k == 133:
        return "maskformer_r50_coco_panoptic"
    if k == 150 and model["enc_layers"] > 0:
        return "maskformer_r50_ade20k_panoptic"
    if k == 150 and model["backbone"] == "swin" and model["swin_window_size"] == 12:
        return "maskformer_swin_b_ade20k"  # the res640 recipe
    return {
        171: "maskformer_r50_coco_stuff",
        19: "maskformer_r101_cityscapes",
        847: "maskformer_r50_ade20k_full",
    }.get(k, "maskformer_r50_ade20k")


def _count(state: dict[str, Tensor], prefix: str) -> int:
    """Number of consecutive integer children ``prefix{i}.`` (0, 1, 2, ...) present in the keys."""
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    n = 0
    while n in found:
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# matching to the model


def match_to_model(
    state: dict[str, Tensor], expected: dict[str, Tensor], source: str
) -> dict[str, Tensor]:
    """Check a renamed state dict against a model's ``state_dict()`` and complete it.

    Derived buffers (BN step counters, Swin index tables) the model has but the file lacks are taken
    from the model; ones the file has but the model lacks are dropped. Values are cast to the
    model's dtypes.

    Raises:
        CheckpointError: unused keys, missing weights, or shape mismatches (a few are named).
    """
    unused = [k for k in state if k not in expected and not k.endswith(_DERIVED)]
    missing = [k for k in expected if k not in state and not k.endswith(_DERIVED)]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(t.shape)}"
        for k, t in expected.items()
        if k in state and state[k].shape != t.shape
    ]
    problems = [
        f"{len(v)} {what}: {_few(v)}"
        for what, v in (
            ("weights in the file have no place in the model", unused),
            ("weights the model needs are not in the file", missing),
            ("weights have the wrong shape (file vs model)", wrong),
        )
        if v
    ]
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model: "
            + "; ".join(problems)
            + " (pass --preset if the inferred model is wrong)"
        )
    return {k: state.get(k, t).to(t.dtype) for k, t in expected.items()}


def convert_official_state_dict(
    state: dict[str, Tensor], cfg: Config | None = None, source: str = "the checkpoint"
) -> tuple[dict[str, Tensor], Config]:
    """Official keys -> our complete state dict, and the config (inferred unless ``cfg`` given)."""
    ours = rename_official_keys(state)
    cfg = cfg if cfg is not None else infer_config(ours)
    return _build_and_match(ours, cfg, source), cfg


def read_and_rename(
    path: str | Path, cfg: Config | None = None, preset: str | None = None
) -> tuple[dict[str, Tensor], Config]:
    """Read an official .pkl/.pth, rename its keys, and infer the config unless one is forced.

    Args:
        path: the official file.
        cfg: use this config instead of inferring one.
        preset: use this preset (a name from ``config.PRESETS``) instead of inferring; K and Q
            are still read from the weights.

    Returns:
        The renamed (not yet model-checked, see ``match_to_model``) state dict and the config.
    """
    ours = rename_official_keys(read_official_file(path))
    if preset is not None:
        try:
            cfg = get_preset(preset)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        cfg = replace(cfg, model=replace(cfg.model, **_class_and_query_counts(ours)))
    return ours, cfg if cfg is not None else infer_config(ours)


def _class_and_query_counts(state: dict[str, Tensor]) -> dict[str, int]:
    """K and Q as the weights have them: a preset fixes the architecture, not the class set."""
    out = {}
    if "predictor.class_embed.weight" in state:
        out["num_classes"] = state["predictor.class_embed.weight"].shape[0] - 1
    if "predictor.query_embed.weight" in state:
        out["num_queries"] = state["predictor.query_embed.weight"].shape[0]
    return out


def convert_official_file(
    path: str | Path, cfg: Config | None = None, preset: str | None = None
) -> tuple[dict[str, Tensor], Config]:
    """Read and convert an official .pkl/.pth; ``preset`` (a name) or ``cfg`` forces the config."""
    ours, cfg = read_and_rename(path, cfg, preset)
    return _build_and_match(ours, cfg, str(path)), cfg


def _build_and_match(ours: dict[str, Tensor], cfg: Config, source: str) -> dict[str, Tensor]:
    from maskformer.model import build_model

    try:
        expected = build_model(cfg.model).state_dict()
    except ConfigError as e:
        raise CheckpointError(f"cannot build the model for {source}: {e}") from None
    return match_to_model(ours, expected, source)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "")
