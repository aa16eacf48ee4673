"""Our MaskFormer reproduces Hugging Face's ``MaskFormerForInstanceSegmentation`` on its weights.

HF is the reference implementation we did not write: random HF models (ResNet-50 and Swin-T
backbones, full size) are saved with ``save_pretrained``, read back and converted by our converter,
and both networks run the same pixels at two sizes, one not divisible by 32.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from maskformer.converters.hf import convert_hf_state_dict, read_hf_directory
from maskformer.model import build_model

SIZES = [(96, 128), (100, 76)]  # (H, W); 100x76 is not a multiple of 32 (nor of the Swin window)
FP32_TOL = 1e-4
FP64_TOL = 1e-8


def _hf_config(backbone: str):
    from transformers import MaskFormerConfig, MaskFormerSwinConfig, ResNetConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if backbone == "resnet50":
        bb = ResNetConfig(
            depths=[3, 4, 6, 3],
            hidden_sizes=[256, 512, 1024, 2048],
            layer_type="bottleneck",
            out_features=stages,
        )
    else:
        bb = MaskFormerSwinConfig(
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            out_features=stages,
        )
    return MaskFormerConfig(backbone_config=bb, num_labels=150)


@torch.no_grad()
def _perturb(model: nn.Module) -> None:
    """Make HF's init non-trivial: BN stats/affine, norms, biases and Swin position biases random.

    HF initialises BN weights ~N(0, 0.02) with zero running stats and LayerNorms to 1/0; with those
    a wrong eps, a swapped norm or a missing bias would go unnoticed.
    """
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.normal_(0, 0.2)
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
        elif isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.normal_(0, 0.2)
        elif isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
            mod.bias.normal_(0, 0.05)
        table = getattr(mod, "relative_position_bias_table", None)
        if isinstance(table, nn.Parameter):
            table.normal_(0, 0.5)


@pytest.fixture(scope="module", params=["resnet50", "swin"])
def pair(request, tmp_path_factory):
    """(hf_model, our_model, our_cfg), both in eval mode, ours loaded strictly from HF's files."""
    from transformers import MaskFormerForInstanceSegmentation

    torch.manual_seed(0)
    hf = MaskFormerForInstanceSegmentation(_hf_config(request.param)).eval()
    _perturb(hf)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    hf.save_pretrained(path)
    state_dict, hf_config = read_hf_directory(path)
    converted, cfg = convert_hf_state_dict(state_dict, hf_config)
    ours = build_model(cfg.model).eval()
    ours.load_state_dict(converted, strict=True)  # every key mapped, none left over
    assert cfg.model.backbone == request.param and cfg.model.num_classes == 150
    return hf, ours, cfg


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _run_both(hf, ours, x: torch.Tensor):
    """HF output (with decoder hidden states) and ours (plus each decoder layer's raw output)."""
    states = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o: states.append(o))
        for layer in ours.predictor.transformer.decoder.layers
    ]
    try:
        with torch.no_grad():
            ref = hf(pixel_values=x, output_hidden_states=True)
            out = ours(x, aux=True)
    finally:
        for hk in hooks:
            hk.remove()
    return ref, out, states


def _compare_final(ref, out, tol: float, label: str) -> None:
    e_cls = _max_err(out["pred_logits"], ref.class_queries_logits)
    e_mask = _max_err(out["pred_masks"], ref.masks_queries_logits)
    scale = ref.masks_queries_logits.abs().max().item()
    print(
        f"[hf-equivalence] {label}: max abs err pred_logits {e_cls:.2e}, "
        f"pred_masks {e_mask:.2e} (max |mask logit| {scale:.1f})"
    )
    assert scale > 1.0  # the outputs are not trivially near zero
    assert e_cls < tol and e_mask < tol


def _compare_decoder_layers(ours, ref, out, states, label: str) -> None:
    """Every decoder layer's output equals HF's; our aux outputs are the heads on the normed states.

    HF's own ``auxiliary_logits`` differ from the official code (they skip the shared decoder
    LayerNorm and include the all-zero decoder input), so the per-layer states are compared instead.
    HF's hidden states are (zero input, layer 1..L-1 raw outputs, last layer after the shared norm).
    """
    pred = ours.predictor
    ref_states = ref.transformer_decoder_hidden_states[1:]
    assert len(states) == len(ref_states) == len(pred.transformer.decoder.layers)
    with torch.no_grad():
        ours_states = states[:-1] + [pred.transformer.decoder.norm(states[-1])]
        errs = [_max_err(s, r) for s, r in zip(ours_states, ref_states, strict=True)]
        print(
            f"[hf-equivalence] {label} decoder layer outputs, max abs err: "
            + ", ".join(f"{e:.1e}" for e in errs)
        )
        assert max(errs) < FP32_TOL
        assert len(out["aux_outputs"]) == len(states) - 1
        mask_features = ref.pixel_decoder_last_hidden_state
        for state, aux in zip(ref_states[:-1], out["aux_outputs"], strict=True):
            normed = pred.transformer.decoder.norm(state)
            masks = torch.einsum("bqc,bchw->bqhw", pred.mask_embed(normed), mask_features)
            assert _max_err(aux["pred_logits"], pred.class_embed(normed)) < FP32_TOL
            assert _max_err(aux["pred_masks"], masks) < FP32_TOL


@pytest.mark.slow
def test_fp32_outputs_and_decoder_layers_match_hf(pair):
    hf, ours, cfg = pair
    for batch, (h, w) in zip((2, 1), SIZES, strict=True):
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(h))
        ref, out, states = _run_both(hf, ours, x)
        label = f"{cfg.model.backbone} fp32 {batch}x3x{h}x{w}"
        assert out["pred_masks"].shape == (batch, cfg.model.num_queries, -(-h // 4), -(-w // 4))
        _compare_final(ref, out, FP32_TOL, label)
        _compare_decoder_layers(ours, ref, out, states, label)


@pytest.mark.slow
def test_fp64_outputs_match_hf(pair):
    """In float64 the two implementations agree to rounding: any real difference would show."""
    hf, ours, cfg = pair
    h, w = SIZES[1]
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    try:
        ref, out, _ = _run_both(hf.double(), ours.double(), x)
        _compare_final(ref, out, FP64_TOL, f"{cfg.model.backbone} fp64 1x3x{h}x{w}")
    finally:
        hf.float(), ours.float()
