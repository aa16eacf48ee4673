"""The network: output shapes over backbones and odd sizes, key names, parameter counts, DAG."""

from __future__ import annotations

import ast
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d  # what timm.layers.freeze_batch_norm_2d uses

from maskformer.config import ConfigError, apply_overrides, get_preset
from maskformer.model import build_model
from maskformer.model.position_encoding import PositionEmbeddingSine

MODEL_DIR = Path(__file__).resolve().parents[1] / "maskformer" / "model"


def _tiny(backbone: str, **overrides):
    cfg = apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": backbone})
    return replace(cfg.model, **overrides)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("backbone", ["test_resnet", "resnet18", "swin"])
@pytest.mark.parametrize("size", [(64, 64), (72, 100), (70, 94)])
def test_output_shapes(backbone, size):
    cfg = _tiny(backbone)
    model = build_model(cfg).eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w), aux=True)
    q, k = cfg.num_queries, cfg.num_classes
    assert out["pred_logits"].shape == (2, q, k + 1)
    assert out["pred_masks"].shape == (2, q, math.ceil(h / 4), math.ceil(w / 4))
    assert len(out["aux_outputs"]) == cfg.dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    assert torch.isfinite(out["pred_masks"]).all()


def test_aux_outputs_train_eval_and_deep_supervision(tiny_cfg):
    x = torch.randn(1, 3, 64, 64)
    cfg = replace(tiny_cfg.model, dec_layers=3)
    model = build_model(cfg)
    assert len(model.train()(x)["aux_outputs"]) == 2  # training: dec_layers - 1
    with torch.no_grad():
        assert model.eval()(x)["aux_outputs"] == []  # inference skips them by default
        assert len(model(x, aux=True)["aux_outputs"]) == 2
        off = build_model(replace(cfg, deep_supervision=False))
        assert off.train()(x)["aux_outputs"] == []
        assert off.eval()(x, aux=True)["aux_outputs"] == []


def test_aux_does_not_change_the_final_prediction(tiny_cfg):
    """With or without aux outputs (or deep supervision) the final prediction is the same."""
    torch.manual_seed(0)
    on = build_model(tiny_cfg.model).eval()
    off = build_model(replace(tiny_cfg.model, deep_supervision=False)).eval()
    off.load_state_dict(on.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b, c = on(x, aux=True), off(x), on(x)
    for other in (b, c):
        torch.testing.assert_close(a["pred_logits"], other["pred_logits"])
        torch.testing.assert_close(a["pred_masks"], other["pred_masks"])


def test_encoder_pixel_decoder_tiny(tiny_cfg):
    cfg = replace(tiny_cfg.model, enc_layers=2, transformer_in_feature="transformer_encoder")
    model = build_model(cfg).eval()
    keys = model.state_dict().keys()
    assert "pixel_decoder.transformer.encoder.layers.1.self_attn.in_proj_weight" in keys
    assert "pixel_decoder.input_proj.weight" in keys
    assert not any(k.startswith("predictor.input_proj") for k in keys)  # 64 ch = hidden_dim
    out = model(torch.randn(1, 3, 72, 100))
    assert out["pred_masks"].shape == (1, cfg.num_queries, 18, 25)


@pytest.mark.parametrize("feature", ["res2", "res3", "res4"])
def test_decoder_can_read_another_backbone_feature(tiny_cfg, feature):
    """TRANSFORMER_IN_FEATURE may name any backbone feature (the demo model reads res2)."""
    model = build_model(replace(tiny_cfg.model, transformer_in_feature=feature)).eval()
    channels = model.backbone.out_channels[feature]
    proj = model.predictor.input_proj
    if channels == tiny_cfg.model.hidden_dim:
        assert isinstance(proj, torch.nn.Identity)
    else:
        assert proj.weight.shape[1] == channels
    captured = {}
    model.predictor.register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    out = model(torch.randn(1, 3, 64, 96))
    stride = {"res2": 4, "res3": 8, "res4": 16}[feature]
    assert captured["x"].shape[-2:] == (64 // stride, 96 // stride)
    assert out["pred_masks"].shape == (1, tiny_cfg.model.num_queries, 16, 24)
    with pytest.raises(ConfigError, match="res2..res5"):
        build_model(replace(tiny_cfg.model, transformer_in_feature="res6"))


def test_decoder_can_read_the_pixel_embedding(tiny_cfg):
    """The official head's 'pixel_embedding' option: the decoder attends to the mask features."""
    cfg = replace(tiny_cfg.model, transformer_in_feature="pixel_embedding", mask_dim=48)
    model = build_model(cfg).eval()
    assert model.predictor.input_proj.weight.shape[1] == 48  # mask_dim channels in
    seen = {}
    model.predictor.register_forward_pre_hook(lambda m, args: seen.update(x=args[0], f=args[1]))
    out = model(torch.randn(1, 3, 64, 96))
    assert seen["x"] is seen["f"]  # the same tensor the masks are made from
    assert out["pred_masks"].shape == (1, cfg.num_queries, 16, 24)


def test_backward_reaches_every_trainable_parameter(tiny_cfg):
    model = build_model(tiny_cfg.model).train()
    out = model(torch.randn(2, 3, 64, 64))
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_bf16_autocast_runs(tiny_cfg):
    model = build_model(tiny_cfg.model).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out["pred_masks"].float()).all()


# ---------------------------------------------------------------------------------------------
# official-size models: parameter counts and key names (built, never run at full size)


@pytest.mark.parametrize(
    "preset,expected",
    [
        ("maskformer_r50_ade20k", 41.3e6),  # paper: 41M; reference sheet: 41.2-41.3M
        ("maskformer_r50_coco_panoptic", 45.0e6),  # paper: 45M (+6 Enc, no predictor input_proj)
        ("maskformer_swin_t_ade20k", 42.0e6),  # paper: 42M
    ],
)
def test_parameter_counts(preset, expected):
    model = build_model(get_preset(preset).model)
    n = _n_params(model)
    assert abs(n - expected) / expected < 0.01, f"{preset}: {n / 1e6:.3f}M"


def test_official_key_scheme_r50():
    sd = build_model(get_preset("maskformer_r50_ade20k").model).state_dict()
    for key in [
        "backbone.body.conv1.weight",
        "backbone.body.bn1.running_var",
        "backbone.body.layer4.2.conv3.weight",
        "backbone.body.layer1.0.downsample.1.weight",
        "pixel_decoder.adapter_1.weight",
        "pixel_decoder.adapter_1.norm.weight",
        "pixel_decoder.adapter_3.norm.bias",
        "pixel_decoder.layer_4.weight",
        "pixel_decoder.layer_1.norm.weight",
        "pixel_decoder.mask_features.bias",
        "predictor.query_embed.weight",
        "predictor.input_proj.weight",
        "predictor.transformer.decoder.layers.5.self_attn.in_proj_weight",
        "predictor.transformer.decoder.layers.0.multihead_attn.out_proj.bias",
        "predictor.transformer.decoder.layers.0.linear1.weight",
        "predictor.transformer.decoder.layers.0.norm3.weight",
        "predictor.transformer.decoder.norm.weight",
        "predictor.class_embed.weight",
        "predictor.mask_embed.layers.2.bias",
    ]:
        assert key in sd, key
    assert "pixel_decoder.adapter_4.weight" not in sd  # res5 has no lateral conv
    assert "pixel_decoder.adapter_1.bias" not in sd  # bias only without norm
    assert sd["pixel_decoder.layer_4.weight"].shape == (256, 2048, 3, 3)
    assert sd["predictor.class_embed.weight"].shape == (151, 256)
    assert not any("num_batches_tracked" in k for k in sd)  # FrozenBN


def test_official_key_scheme_coco_encoder():
    sd = build_model(get_preset("maskformer_r50_coco_panoptic").model).state_dict()
    assert sd["pixel_decoder.layer_4.weight"].shape == (256, 256, 3, 3)  # replaced, acts on T
    assert sd["pixel_decoder.input_proj.weight"].shape == (256, 2048, 1, 1)
    assert "pixel_decoder.transformer.encoder.layers.5.norm2.weight" in sd
    assert not any(k.startswith("pixel_decoder.transformer.encoder.norm") for k in sd)  # post-norm
    assert not any(k.startswith("predictor.input_proj") for k in sd)


def test_official_key_scheme_swin():
    model = build_model(get_preset("maskformer_swin_t_ade20k").model)
    sd = model.state_dict()
    for key in [
        "backbone.patch_embed.proj.weight",
        "backbone.patch_embed.norm.weight",
        "backbone.layers.0.blocks.1.attn.relative_position_bias_table",
        "backbone.layers.0.blocks.1.attn.relative_position_index",
        "backbone.layers.2.blocks.5.attn.qkv.weight",
        "backbone.layers.2.blocks.5.mlp.fc2.bias",
        "backbone.layers.0.downsample.reduction.weight",
        "backbone.layers.2.downsample.norm.weight",
        "backbone.norm0.weight",
        "backbone.norm3.bias",
    ]:
        assert key in sd, key
    assert not any(k.startswith("backbone.layers.3.downsample") for k in sd)  # end of stage i
    assert sd["backbone.layers.0.downsample.reduction.weight"].shape == (192, 384)
    assert sd["backbone.layers.1.blocks.0.attn.relative_position_bias_table"].shape == (169, 6)


def test_frozen_bn_and_resnet101c():
    cfg = get_preset("maskformer_r101c_ade20k").model
    model = build_model(cfg)
    body = model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert body.conv1[0].kernel_size == (3, 3) and body.conv1[0].stride == (2, 2)  # deep stem
    assert body.conv1[6].out_channels == 128
    assert [b.conv2.dilation[0] for b in body.layer4] == [1, 2, 4]
    assert [b.conv2.padding[0] for b in body.layer4] == [1, 2, 4]
    assert body.layer4[0].conv2.stride == (2, 2)  # res5 stays at stride 32
    trainable = replace(cfg, frozen_bn=False, backbone="resnet18")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model(trainable).modules())


def test_resnet101c_res5_stride(tiny_cfg):
    cfg = replace(tiny_cfg.model, backbone="resnet101c")
    model = build_model(cfg).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_pixel_decoder_init_is_c2_xavier():
    model = build_model(get_preset("maskformer_r50_ade20k").model)
    pd = model.pixel_decoder
    for conv in (pd.adapter_1, pd.layer_4, pd.mask_features, model.predictor.input_proj):
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= math.sqrt(3.0 / fan_in) + 1e-6  # kaiming_uniform(a=1)
        assert conv.weight.std() > 0.5 * math.sqrt(1.0 / fan_in)
        if conv.bias is not None:
            assert (conv.bias == 0).all()
    w = model.predictor.transformer.decoder.layers[0].linear1.weight  # xavier_uniform
    assert w.abs().max() <= math.sqrt(6.0 / sum(w.shape)) + 1e-6


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError):
        build_model(_tiny("no_such_backbone_xyz"))
    with pytest.raises(ConfigError):
        build_model(_tiny("test_resnet", transformer_in_feature="transformer_encoder"))


def test_position_encoding_formula():
    """Spot values of the sine encoding: y in channels [0, F), x in [F, 2F), sin/cos interleaved."""
    pe = PositionEmbeddingSine(num_pos_feats=8)(torch.zeros(1, 3, 5, 7))  # (1, 16, 5, 7)
    assert pe.shape == (1, 16, 5, 7)
    i, j = 3, 4
    y = (i + 1) / (5 + 1e-6) * 2 * math.pi
    x = (j + 1) / (7 + 1e-6) * 2 * math.pi
    dim_t = [10000 ** (2 * (k // 2) / 8) for k in range(8)]
    assert pe[0, 0, i, j].item() == pytest.approx(math.sin(y / dim_t[0]), abs=1e-6)
    assert pe[0, 3, i, j].item() == pytest.approx(math.cos(y / dim_t[3]), abs=1e-6)
    assert pe[0, 8 + 2, i, j].item() == pytest.approx(math.sin(x / dim_t[2]), abs=1e-6)
    assert pe[0, 8 + 5, i, j].item() == pytest.approx(math.cos(x / dim_t[5]), abs=1e-6)


def test_model_imports_only_torch_timm_config_contracts():
    allowed_roots = {"torch", "timm", "__future__"} | set(sys.stdlib_module_names)
    allowed_project = {"maskformer.config", "maskformer.contracts"}
    for path in MODEL_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root == "maskformer":
                    ok = name in allowed_project or name.startswith("maskformer.model")
                    assert ok, f"{path.name} imports {name}"
                else:
                    assert root in allowed_roots, f"{path.name} imports {name}"
