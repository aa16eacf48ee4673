"""Hugging Face ``MaskFormerForInstanceSegmentation`` files -> our state dict, Config and metadata.

HF stores q/k/v as separate Linear layers; we use ``nn.MultiheadAttention`` (packed ``in_proj``) and
the official Swin (packed ``qkv``). HF's FPN counts from the coarsest level (``fpn.stem`` = our
``layer_4``, ``fpn.layers.0`` = ``adapter_3``/``layer_3``); HF's own ResNet is mapped onto timm's.
Both the current and the legacy (``out_proj``, ``layers.N.fc1``) HF key spellings are accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maskformer.config import Config, DatasetMeta, ModelConfig, default_colors, get_preset
from maskformer.errors import CheckpointError

_PLM = r"model\.pixel_level_module\."
_ENC = _PLM + r"encoder\."
_SWIN = _ENC + r"model\."
_DEC = r"model\.transformer_module\.decoder\."

# ResNet depths (HF layer_type, depths) -> our backbone name.
_RESNETS = {
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
}

Rule = tuple[re.Pattern, Callable[[re.Match], str] | str | None]


def _rules() -> list[Rule]:
    """(pattern, replacement) pairs; a None replacement drops the key. First match wins."""

    def stage(m: re.Match) -> str:
        return f"backbone.body.layer{int(m[1]) + 1}.{m[2]}."

    def fpn(kind: str) -> Callable[[re.Match], str]:
        # fpn.layers.0 acts on res4 (our index 3), fpn.layers.2 on res2 (our index 1).
        return lambda m: f"pixel_decoder.{kind}_{3 - int(m[1])}.{m[2]}"

    block = _SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
    layer = _DEC + r"layers\.(\d+)\."
    raw = [
        # --- HF ResNet -> timm ResNet
        (_ENC + r"embedder\.embedder\.convolution\.", "backbone.body.conv1."),
        (_ENC + r"embedder\.embedder\.normalization\.", "backbone.body.bn1."),
        (
            _ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
            lambda m: stage(m) + "downsample.0.",
        ),
        (
            _ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
            lambda m: stage(m) + "downsample.1.",
        ),
        (
            _ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
            lambda m: stage(m) + f"conv{int(m[3]) + 1}.",
        ),
        (
            _ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
            lambda m: stage(m) + f"bn{int(m[3]) + 1}.",
        ),
        # --- HF MaskFormerSwin -> official Swin
        (_SWIN + r"embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
        (_SWIN + r"embeddings\.norm\.", "backbone.patch_embed.norm."),
        (block + r"layernorm_before\.", lambda m: f"backbone.layers.{m[1]}.blocks.{m[2]}.norm1."),
        (block + r"layernorm_after\.", lambda m: f"backbone.layers.{m[1]}.blocks.{m[2]}.norm2."),
        (
            block + r"attention\.(?:self\.|relative_position_bias\.)?(relative_position_\w+)",
            lambda m: f"backbone.layers.{m[1]}.blocks.{m[2]}.attn.{m[3]}",
        ),
        (
            block + r"attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.(\w+)",
            lambda m: f"backbone.layers.{m[1]}.blocks.{m[2]}.attn.qkv.{m[4]}#{m[3][0]}",
        ),
        (
            block + r"attention\.(?:output\.dense|o_proj)\.",
            lambda m: f"backbone.layers.{m[1]}.blocks.{m[2]}.attn.proj.",
        ),
        (
            block + r"(?:intermediate\.dense|mlp\.fc1)\.",
            lambda m: f"backbone.layers.{m[1]}.blocks.{m[2]}.mlp.fc1.",
        ),
        (
            block + r"(?:output\.dense|mlp\.fc2)\.",
            lambda m: f"backbone.layers.{m[1]}.blocks.{m[2]}.mlp.fc2.",
        ),
        (
            _SWIN + r"encoder\.layers\.(\d+)\.downsample\.",
            lambda m: f"backbone.layers.{m[1]}.downsample.",
        ),
        (_SWIN + r"layernorm\.", None),  # HF's final Swin norm feeds nothing MaskFormer uses
        (_ENC + r"hidden_states_norms\.(\d+)\.", lambda m: f"backbone.norm{m[1]}."),
        # --- FPN pixel decoder
        (_PLM + r"decoder\.fpn\.stem\.0\.", "pixel_decoder.layer_4."),
        (_PLM + r"decoder\.fpn\.stem\.1\.", "pixel_decoder.layer_4.norm."),
        (_PLM + r"decoder\.fpn\.layers\.(\d+)\.proj\.0\.(\w+)", fpn("adapter")),
        (
            _PLM + r"decoder\.fpn\.layers\.(\d+)\.proj\.1\.(\w+)",
            lambda m: f"pixel_decoder.adapter_{3 - int(m[1])}.norm.{m[2]}",
        ),
        (_PLM + r"decoder\.fpn\.layers\.(\d+)\.block\.0\.(\w+)", fpn("layer")),
        (
            _PLM + r"decoder\.fpn\.layers\.(\d+)\.block\.1\.(\w+)",
            lambda m: f"pixel_decoder.layer_{3 - int(m[1])}.norm.{m[2]}",
        ),
        (_PLM + r"decoder\.mask_projection\.", "pixel_decoder.mask_features."),
        # --- DETR decoder
        (r"model\.transformer_module\.queries_embedder\.", "predictor.query_embed."),
        (r"model\.transformer_module\.input_projection\.", "predictor.input_proj."),
        (
            layer + r"(self_attn|encoder_attn)\.([qkv])_proj\.(\w+)",
            lambda m: f"{_dec(m)}.{_attn(m[2])}.in_proj_{m[4]}#{m[3]}",
        ),
        (
            layer + r"(self_attn|encoder_attn)\.(?:out_proj|o_proj)\.",
            lambda m: f"{_dec(m)}.{_attn(m[2])}.out_proj.",
        ),
        (layer + r"self_attn_layer_norm\.", lambda m: f"{_dec(m)}.norm1."),
        (layer + r"encoder_attn_layer_norm\.", lambda m: f"{_dec(m)}.norm2."),
        (layer + r"final_layer_norm\.", lambda m: f"{_dec(m)}.norm3."),
        (layer + r"(?:mlp\.)?fc1\.", lambda m: f"{_dec(m)}.linear1."),
        (layer + r"(?:mlp\.)?fc2\.", lambda m: f"{_dec(m)}.linear2."),
        (_DEC + r"layernorm\.", "predictor.transformer.decoder.norm."),
        # --- heads
        (r"class_predictor\.", "predictor.class_embed."),
        (r"mask_embedder\.(\d+)\.0\.", lambda m: f"predictor.mask_embed.layers.{m[1]}."),
        (r"criterion\.", None),
    ]
    return [(re.compile(p), r) for p, r in raw]


def _dec(m: re.Match) -> str:
    return f"predictor.transformer.decoder.layers.{m[1]}"


def _attn(hf_name: str) -> str:
    return "self_attn" if hf_name == "self_attn" else "multihead_attn"


_RULES = _rules()


def rename_hf_key(key: str) -> str | None:
    """Our name for one HF key (q/k/v parts carry a ``#q``/``#k``/``#v`` tag), None if dropped.

    Raises:
        CheckpointError: the key belongs to no part of MaskFormer we know.
    """
    for pattern, repl in _RULES:
        m = pattern.match(key)
        if m is None:
            continue
        if repl is None:
            return None
        new = repl(m) if callable(repl) else repl
        return new + key[m.end() :]
    raise CheckpointError(f"unexpected key {key!r} in the Hugging Face checkpoint")


def convert_hf_state_dict(
    hf_state_dict: dict[str, Tensor], hf_config: dict[str, Any], meta: DatasetMeta | None = None
) -> tuple[dict[str, Tensor], Config]:
    """Map an HF ``MaskFormerForInstanceSegmentation`` state dict onto ``build_model(cfg.model)``.

    Args:
        hf_state_dict: the HF weights (``model.safetensors`` contents).
        hf_config: the HF ``config.json`` as a dict.
        meta: optional class metadata (only used to validate the class count).

    Returns:
        Our state dict (float tensors as stored) and the matching ``Config``.
    """
    cfg, _ = config_from_hf(hf_config, meta, num_classes=_stored_classes(hf_state_dict))
    out: dict[str, Tensor] = {}
    packed: dict[str, dict[str, Tensor]] = {}
    for key, value in hf_state_dict.items():
        new = rename_hf_key(key)
        if new is None:
            continue
        if cfg.model.frozen_bn and new.endswith("num_batches_tracked"):
            continue  # FrozenBatchNorm2d has no counter
        if "#" in new:
            name, part = new.split("#")
            packed.setdefault(name, {})[part] = value
            continue
        out[new] = value
    for name, parts in packed.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise CheckpointError(f"{name}: the HF checkpoint has only {sorted(parts)} of q, k, v")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, cfg


def _stored_classes(hf_state_dict: dict[str, Tensor]) -> int | None:
    """K as the class predictor (K+1, D) stores it, or None when the weights lack it."""
    w = hf_state_dict.get("class_predictor.weight")
    return None if w is None or w.dim() != 2 else int(w.shape[0]) - 1


def _backbone_fields(bb: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig fields for HF's ``backbone_config``."""
    kind = bb.get("model_type")
    if kind == "resnet":
        layer_type, depths = bb.get("layer_type", "bottleneck"), tuple(bb.get("depths", ()))
        name = _RESNETS.get((layer_type, depths))
        if (
            name is None
            or bb.get("downsample_in_bottleneck")
            or bb.get("downsample_in_first_stage")
        ):
            raise CheckpointError(f"unsupported HF ResNet backbone ({layer_type}, depths {depths})")
        return {"backbone": name, "frozen_bn": True}
    if kind in ("maskformer-swin", "swin"):
        if (
            bb.get("patch_size", 4) != 4
            or bb.get("use_absolute_embeddings")
            or bb.get("mlp_ratio", 4.0) != 4.0
            or not bb.get("qkv_bias", True)
        ):
            raise CheckpointError(
                "unsupported HF Swin backbone (patch 4, mlp_ratio 4, qkv_bias, "
                "no absolute position embeddings are required)"
            )
        image_size = bb.get("image_size", 224)
        return {
            "backbone": "swin",
            "swin_embed_dim": int(bb["embed_dim"]),
            "swin_depths": tuple(int(d) for d in bb["depths"]),
            "swin_num_heads": tuple(int(h) for h in bb["num_heads"]),
            "swin_window_size": int(bb["window_size"]),
            "swin_pretrain_img_size": int(
                image_size if isinstance(image_size, int) else image_size[0]
            ),
            "swin_drop_path_rate": float(bb.get("drop_path_rate", 0.3)),
        }
    raise CheckpointError(f"unsupported HF MaskFormer backbone type {kind!r} (resnet or swin only)")


def config_from_hf(
    hf_config: dict[str, Any],
    meta: DatasetMeta | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[Config, DatasetMeta]:
    """Our ``Config`` and ``DatasetMeta`` for an HF MaskFormer ``config.json``.

    Class names come from ``id2label``. transformers leaves ``id2label`` out of ``config.json``
    when it is its default two-label map (and reads such a file back with 2 classes): then K is
    ``num_classes`` (the class predictor's rows - 1, when the weights are at hand), else
    ``num_labels``, else 2, and the names are HF's defaults ``LABEL_0``, ``LABEL_1``, ...
    HF does not record thing/stuff flags, so every class is stuff unless ``meta`` is given (it
    must have the same number of classes).
    """
    if hf_config.get("model_type") != "maskformer":
        raise CheckpointError(
            f"not an HF MaskFormer config (model_type "
            f"{hf_config.get('model_type')!r}); Mask2Former is not supported"
        )
    dec = hf_config.get("decoder_config") or {}
    if dec.get("activation_function", "relu") != "relu":
        raise CheckpointError("only ReLU DETR decoders are supported")
    id2label = _id2label(hf_config, num_classes)
    k = len(id2label)
    model = ModelConfig(
        **_backbone_fields(hf_config.get("backbone_config") or {}),
        num_classes=k,
        num_queries=int(dec.get("num_queries", 100)),
        hidden_dim=int(dec.get("d_model", 256)),
        num_heads=int(dec.get("decoder_attention_heads", 8)),
        dim_feedforward=int(dec.get("decoder_ffn_dim", 2048)),
        dec_layers=int(dec.get("decoder_layers", 6)),
        dropout=float(dec.get("dropout", 0.1)),
        conv_dim=int(hf_config.get("fpn_feature_size", 256)),
        mask_dim=int(hf_config.get("mask_feature_size", 256)),
    )
    base = get_preset("maskformer_r50_coco_panoptic" if k == 133 else "maskformer_r50_ade20k")
    cfg = replace(base, model=replace(model, size_divisibility=32))
    if meta is None:
        meta = DatasetMeta(
            class_names=tuple(str(id2label[i]) for i in range(k)),
            isthing=(False,) * k,
            colors=default_colors(k),
        )
    elif meta.num_classes != k:
        raise CheckpointError(
            f"the metadata has {meta.num_classes} classes but the HF model has {k}"
        )
    return cfg, meta


def _id2label(hf_config: dict[str, Any], num_classes: int | None) -> dict[int, str]:
    raw = hf_config.get("id2label")
    if not raw:  # HF's default map, left out of config.json
        k = num_classes if num_classes is not None else int(hf_config.get("num_labels", 2))
        if k < 1:
            raise CheckpointError(f"the HF model has {k} classes")
        return {i: f"LABEL_{i}" for i in range(k)}
    try:
        id2label = {int(i): str(name) for i, name in raw.items()}
    except (AttributeError, TypeError, ValueError):
        raise CheckpointError("the HF config's id2label must map class ids to names") from None
    k = len(id2label)
    if sorted(id2label) != list(range(k)):
        raise CheckpointError("the HF config's id2label must name classes 0..K-1")
    if num_classes is not None and num_classes != k:
        raise CheckpointError(
            f"the HF config's id2label names {k} classes but its class predictor has "
            f"{num_classes} (+1 no-object) rows"
        )
    return id2label


def read_hf_directory(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``config.json`` plus ``model.safetensors`` (or ``pytorch_model.bin``) from a folder."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face model folder?")
    try:
        hf_config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_path}: {e}") from None
    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st)), hf_config
        if pt.is_file():
            return torch.load(pt, map_location="cpu", weights_only=True), hf_config
    except Exception as e:  # noqa: BLE001 - any decoding failure is a broken file for the user
        raise CheckpointError(f"cannot read the weights in {path}: {e}") from None
    raise CheckpointError(
        f"{path} has neither model.safetensors nor pytorch_model.bin "
        "(sharded checkpoints are not supported)"
    )
