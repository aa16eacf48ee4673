"""Official (detectron2 model-zoo) checkpoints and HF folders -> native checkpoints via `convert`.

The official files are written here from our own models with the key names that
MASKFORMER_REFERENCE.md section 6 documents (the rules below are the reverse of the converter's,
written independently), pickled with numpy values as the model zoo does.
"""

import pickle
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from maskformer.__main__ import main
from maskformer.checkpoint import load_checkpoint, load_model
from maskformer.config import apply_overrides, get_preset
from maskformer.converters.convert import convert
from maskformer.converters.official import convert_official_file, infer_config
from maskformer.errors import CheckpointError
from maskformer.model import build_model

ROOT = Path(__file__).resolve().parents[1]

# timm ResNet name -> detectron2 name (MASKFORMER_REFERENCE.md section 6, "Mapping to timm").
_STEM = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}
_DEEP_STEM = {
    "conv1.0": "stem.conv1",
    "conv1.1": "stem.conv1.norm",
    "conv1.3": "stem.conv2",
    "conv1.4": "stem.conv2.norm",
    "conv1.6": "stem.conv3",
    "bn1": "stem.conv3.norm",
}


def _timm_to_d2(key: str, deep_stem: bool) -> str:
    for timm_name, d2 in (_DEEP_STEM if deep_stem else _STEM).items():
        if key.startswith(timm_name + "."):
            return d2 + key[len(timm_name) :]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", m[3])
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return f"res{int(m[1]) + 1}.{m[2]}.{rest}"


def to_official(state, *, old_layout=True, deep_stem=False, numpy=True):
    """Our state dict -> the official key layout (old: pixel decoder right under sem_seg_head)."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # FrozenBN has none
        if key.startswith("backbone.body."):
            key = "backbone." + _timm_to_d2(key[len("backbone.body.") :], deep_stem)
        elif key.startswith("pixel_decoder."):
            key = "sem_seg_head." + (key[len("pixel_decoder.") :] if old_layout else key)
        elif key.startswith("predictor."):
            key = "sem_seg_head." + key
        out[key] = value.numpy().copy() if numpy else value.clone()
    return out


def write_pkl(path, official):
    with open(path, "wb") as f:
        pickle.dump({"model": official, "__author__": "unit test", "matching_heuristics": False}, f)
    return path


def assert_same(converted, want):
    assert converted.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(converted[k], v), k


def _tiny_r18(**model_fields):
    """The tiny head on a ResNet-18 (the smallest backbone with detectron2-style names)."""
    cfg = apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": "resnet18"})
    return replace(cfg, model=replace(cfg.model, frozen_bn=True, num_heads=8, **model_fields))


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_r50_old_layout_pkl(tmp_path):
    cfg = get_preset("maskformer_r50_ade20k")
    state = build_model(cfg.model).state_dict()
    official = to_official(state)
    # the names the reference lists for the released ADE R50 file
    assert official["sem_seg_head.layer_4.weight"].shape == (256, 2048, 3, 3)
    assert official["sem_seg_head.predictor.input_proj.weight"].shape == (256, 2048, 1, 1)
    for key in (
        "backbone.stem.conv1.norm.running_var",
        "backbone.res5.0.shortcut.norm.weight",
        "backbone.res4.5.conv3.weight",
        "sem_seg_head.adapter_1.norm.weight",
    ):
        assert key in official
    official["criterion.empty_weight"] = np.ones(151, np.float32)
    converted, inferred = convert_official_file(write_pkl(tmp_path / "r50.pkl", official))
    assert_same(converted, state)
    assert inferred.model == cfg.model  # backbone, K, Q, layers all read off the weights


@pytest.mark.parametrize("old_layout", [True, False], ids=["old-layout-pkl", "new-layout-pth"])
def test_transformer_encoder_variant(tmp_path, old_layout):
    cfg = _tiny_r18(num_classes=133, enc_layers=2, transformer_in_feature="transformer_encoder")
    state = build_model(cfg.model).state_dict()
    official = to_official(state, old_layout=old_layout, numpy=old_layout)
    head = "sem_seg_head." + ("" if old_layout else "pixel_decoder.")
    enc = head + "transformer.encoder.layers.1"
    assert f"{enc}.self_attn.in_proj_weight" in official
    assert "sem_seg_head.predictor.input_proj.weight" not in official  # encoder feeds the predictor
    if old_layout:
        path = write_pkl(tmp_path / "enc.pkl", official)
    else:
        path = tmp_path / "model_final.pth"
        torch.save({"model": official, "iteration": 3}, path)
    converted, inferred = convert_official_file(path)
    assert_same(converted, state)
    m = inferred.model
    assert (m.backbone, m.num_classes, m.num_queries, m.hidden_dim, m.dec_layers) == (
        "resnet18",
        133,
        cfg.model.num_queries,
        64,
        2,
    )
    assert (m.enc_layers, m.transformer_in_feature, m.conv_dim, m.dim_feedforward) == (
        2,
        "transformer_encoder",
        64,
        256,
    )
    assert inferred.model.size_divisibility == 0  # 133 classes: the COCO panoptic recipe


@pytest.mark.parametrize("keep_index", [True, False])
def test_swin(tmp_path, keep_index):
    cfg = get_preset("maskformer_tiny_swin")
    state = build_model(cfg.model).state_dict()
    official = to_official(state)
    assert "backbone.layers.0.downsample.reduction.weight" in official  # end of stage 0
    if not keep_index:
        official = {k: v for k, v in official.items() if "relative_position_index" not in k}
    converted, inferred = convert_official_file(write_pkl(tmp_path / "swin.pkl", official))
    assert_same(converted, state)
    for field in (
        "backbone",
        "swin_embed_dim",
        "swin_depths",
        "swin_num_heads",
        "swin_window_size",
    ):
        assert getattr(inferred.model, field) == getattr(cfg.model, field)


def test_r101c_deep_stem_names():
    # timm resnet101s on the meta device: key names and shapes, no memory or init time.
    with torch.device("meta"):
        body = timm.create_model("resnet101s", features_only=True)
    backbone = {
        "backbone.body." + k: v
        for k, v in body.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    official = {
        ("backbone." + _timm_to_d2(k[len("backbone.body.") :], deep_stem=True)): v
        for k, v in backbone.items()
    }
    assert {"backbone.stem.conv2.weight", "backbone.stem.conv3.norm.running_mean"} <= set(official)
    from maskformer.converters.official import rename_official_keys

    assert rename_official_keys(official).keys() == backbone.keys()
    head = {
        k: v
        for k, v in build_model(_tiny_r18().model).state_dict().items()
        if not k.startswith("backbone.")
    }
    assert infer_config({**backbone, **head}).model.backbone == "resnet101c"


def test_unused_and_missing_keys_are_named(tmp_path):
    cfg = _tiny_r18()
    official = to_official(build_model(cfg.model).state_dict())
    del official["sem_seg_head.mask_features.bias"]
    official["sem_seg_head.something_new.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as err:
        convert_official_file(write_pkl(tmp_path / "x.pkl", official))
    assert "pixel_decoder.mask_features.bias" in str(err.value)
    assert "pixel_decoder.something_new.weight" in str(err.value)


def test_not_a_maskformer_file(tmp_path):
    path = write_pkl(tmp_path / "R-50.pkl", {"stem.conv1.weight": np.zeros((64, 3, 7, 7))})
    with pytest.raises(CheckpointError, match="not a MaskFormer checkpoint"):
        convert_official_file(path)


def test_convert_picks_metadata(tmp_path):
    cfg = _tiny_r18(num_classes=19)
    src = write_pkl(tmp_path / "city.pkl", to_official(build_model(cfg.model).state_dict()))
    result = convert(src, tmp_path / "city.safetensors")
    assert result.dataset == "cityscapes_19" and result.num_classes == 19
    assert load_checkpoint(tmp_path / "city.safetensors").meta.class_names[0] == "road"
    with pytest.raises(CheckpointError, match="150 classes"):
        convert(src, tmp_path / "x.safetensors", dataset="ade20k_150")
    with pytest.raises(CheckpointError, match="unknown preset"):
        convert(src, tmp_path / "x.safetensors", preset="nope")


def test_convert_with_forced_preset(tmp_path, tiny_cfg):
    state = build_model(tiny_cfg.model).state_dict()  # test_resnet: no detectron2 names exist
    path = tmp_path / "ours.pth"
    torch.save(
        {
            "model": {
                f"sem_seg_head.{k}" if not k.startswith("backbone") else k: v
                for k, v in state.items()
            }
        },
        path,
    )
    converted, _ = convert_official_file(path, cfg=tiny_cfg)
    assert_same(converted, state)
    with pytest.raises(CheckpointError, match="wrong shape"):  # the preset's widths do not fit
        convert_official_file(path, preset="maskformer_tiny")


def test_forced_preset_keeps_k_and_q_of_the_weights(tmp_path):
    cfg = get_preset("maskformer_tiny_swin")
    cfg = replace(cfg, model=replace(cfg.model, num_classes=5, num_queries=7))
    state = build_model(cfg.model).state_dict()
    src = write_pkl(tmp_path / "m.pkl", to_official(state))
    result = convert(src, tmp_path / "m.safetensors", preset="maskformer_tiny_swin")
    assert (result.num_classes, result.num_queries) == (5, 7)  # the preset says 8 and 20
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    assert ckpt.cfg.model == cfg.model  # incl. what the weights cannot tell (4 heads, no dropout)
    assert_same(ckpt.state_dict, state)


def test_hf_class_names_pick_shipped_metadata():
    from maskformer.config import DatasetMeta, default_colors
    from maskformer.converters.convert import prefer_shipped
    from maskformer.metadata import get_metadata

    ade = get_metadata("ade20k_150")
    hf_like = DatasetMeta(
        class_names=ade.class_names, isthing=(False,) * 150, colors=default_colors(150)
    )
    assert prefer_shipped(hf_like) == ade  # thing flags come from the shipped file
    custom = replace(hf_like, class_names=tuple(f"part{i}" for i in range(150)))
    assert prefer_shipped(custom) == custom


# --------------------------------------------------------------------------------------------
# Hugging Face: random HF models -> ours (model engineer's converter) -> official layout -> ours


def _random_hf(tmp_path, backbone):
    from transformers import (
        DetrConfig,
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        MaskFormerSwinConfig,
        ResNetConfig,
    )

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if backbone == "swin":
        bb = MaskFormerSwinConfig(
            embed_dim=32,
            depths=[1, 1, 2, 1],
            num_heads=[1, 2, 4, 8],
            window_size=4,
            out_features=stages,
        )
    else:
        bb = ResNetConfig(
            layer_type="basic",
            depths=[2, 2, 2, 2],
            hidden_sizes=[64, 128, 256, 512],
            embedding_size=64,
            out_features=stages,
        )
    dec = DetrConfig(
        d_model=64,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        num_queries=10,
        encoder_layers=0,
    )
    cfg = MaskFormerConfig(
        backbone_config=bb,
        decoder_config=dec,
        fpn_feature_size=64,
        mask_feature_size=64,
        id2label={i: f"thing{i}" for i in range(5)},
    )
    model = MaskFormerForInstanceSegmentation(cfg).eval()
    model.save_pretrained(tmp_path / f"hf_{backbone}")
    return model, tmp_path / f"hf_{backbone}"


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["swin", "resnet18"])
def test_hf_model_through_official_layout(tmp_path, backbone):
    from maskformer.converters.hf import convert_hf_state_dict, read_hf_directory

    hf_model, hf_dir = _random_hf(tmp_path, backbone)
    ours, cfg = convert_hf_state_dict(*read_hf_directory(hf_dir))
    full = build_model(cfg.model).state_dict()
    full.update({k: v.to(full[k].dtype) for k, v in ours.items()})
    official = to_official(full)
    converted, inferred = convert_official_file(write_pkl(tmp_path / "from_hf.pkl", official))
    assert_same(converted, full)
    assert inferred.model.backbone == cfg.model.backbone

    # the CLI on the HF folder; the native model must reproduce HF's own forward pass
    out = tmp_path / "native.safetensors"
    assert main(["convert", str(hf_dir), str(out)]) == 0
    loaded = load_model(out)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref, got = hf_model(pixel_values=x), loaded.model(x)
    assert torch.allclose(got["pred_logits"], ref.class_queries_logits, atol=1e-4)
    assert torch.allclose(got["pred_masks"], ref.masks_queries_logits, atol=1e-4)
    assert loaded.meta.class_names == tuple(f"thing{i}" for i in range(5))


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_summary_line(tmp_path, capsys):
    cfg = _tiny_r18()
    src = write_pkl(tmp_path / "m.pkl", to_official(build_model(cfg.model).state_dict()))
    assert main(["convert", str(src), str(tmp_path / "m.safetensors")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "resnet18" in lines[0] and "K=8" in lines[0] and "Q=20" in lines[0]
    assert load_model(tmp_path / "m.safetensors").cfg.model.num_queries == 20


@pytest.mark.slow
def test_cli_bad_file_one_line_nonzero(tmp_path):
    bad = tmp_path / "model_final.pkl"
    bad.write_bytes(b"definitely not a pickle")
    out = tmp_path / "out.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "maskformer", "convert", str(bad), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(bad) in lines[0]
    assert not out.exists()
