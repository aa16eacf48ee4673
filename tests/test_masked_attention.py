"""The opt-in masked attention (Mask2Former's): what a query may see, the extra prediction, training."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from maskformer.checkpoint import load_model, save_checkpoint
from maskformer.config import apply_overrides, generic_meta, get_preset
from maskformer.losses import build_criterion, default_loss_weights
from maskformer.model import build_model
from maskformer.model.transformer_decoder import DecoderLayer


def _model_cfg(**overrides):
    cfg = apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": "test_resnet"})
    return replace(cfg.model, masked_attention=True, **overrides)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_a_query_sees_only_its_allowed_keys(pre_norm):
    torch.manual_seed(0)
    layer = DecoderLayer(
        d_model=16, num_heads=2, dim_feedforward=32, dropout=0.0, pre_norm=pre_norm
    ).eval()
    b, q, n = 2, 3, 10
    tgt, query_pos = torch.randn(b, q, 16), torch.randn(b, q, 16)
    memory, pos = torch.randn(b, n, 16), torch.randn(b, n, 16)
    blocked = torch.zeros(b, q, n, dtype=torch.bool)
    blocked[0, 0, 5:] = True  # query 0 of image 0 sees keys 0-4 only
    blocked[1, 2, :3] = True  # query 2 of image 1 does not see keys 0-2
    mask = blocked.repeat_interleave(2, dim=0)  # (B * heads, Q, N), as nn.MultiheadAttention wants
    with torch.no_grad():
        out = layer(tgt, memory, pos, query_pos, memory_mask=mask)
        assert torch.allclose(
            layer(tgt, memory, pos, query_pos, memory_mask=torch.zeros_like(mask)),
            layer(tgt, memory, pos, query_pos),
            atol=1e-6,
        )
        # changing what a query may not see leaves its output alone ...
        changed = memory.clone()
        changed[0, 5:] += 3 * torch.randn(5, 16)
        changed[1, :3] += 3 * torch.randn(3, 16)
        out2 = layer(tgt, changed, pos, query_pos, memory_mask=mask)
    assert torch.allclose(out[0, 0], out2[0, 0], atol=1e-5)
    assert torch.allclose(out[1, 2], out2[1, 2], atol=1e-5)
    # ... while a query that may see those keys changes
    assert not torch.allclose(out[0, 1], out2[0, 1], atol=1e-3)
    # and the masked output for query 0 equals attending to keys 0-4 alone (self-attention is the
    # same, the other queries' cross-attention does not feed back into query 0 in one layer)
    with torch.no_grad():
        alone = layer(tgt[:1], memory[:1, :5], pos[:1, :5], query_pos[:1])
    assert torch.allclose(out[0, 0], alone[0, 0], atol=1e-5)


def test_attention_mask_from_mask_logits():
    model = build_model(_model_cfg(num_heads=2)).eval()
    logits = torch.full((1, 3, 4, 4), -1.0)
    logits[0, 0, :2, :2] = 2.0  # query 0: the top-left 2 x 2 block is its foreground
    logits[0, 2] = 1.0  # query 2: everything; query 1: nothing, so it attends everywhere
    mask = model.predictor._attention_mask(logits, (4, 4))
    assert mask.shape == (2, 3, 16)
    assert torch.equal(mask[0], mask[1])  # one copy per head
    allowed = ~mask[0].view(3, 4, 4)
    assert allowed[0, :2, :2].all() and allowed[0].sum() == 4
    assert allowed[1].all() and allowed[2].all()
    # a coarser attention map reads the resized logits
    assert model.predictor._attention_mask(logits, (2, 2)).shape == (2, 3, 4)


def test_outputs_aux_and_gradients():
    cfg = _model_cfg(dec_layers=3)
    model = build_model(cfg)
    assert model.predictor.query_feat.weight.shape == (cfg.num_queries, cfg.hidden_dim)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert len(out["aux_outputs"]) == cfg.dec_layers  # the prediction before layer 1 as well
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == out["pred_masks"].shape == (2, cfg.num_queries, 16, 16)
    loss = (
        out["pred_masks"].sum()
        + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
        + out["pred_logits"].sum()
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    model.eval()
    with torch.no_grad():
        assert model(x)["aux_outputs"] == []
        assert torch.allclose(model(x)["pred_masks"], model(x, aux=True)["pred_masks"])
        off = build_model(replace(cfg, deep_supervision=False)).train()
        assert off(x)["aux_outputs"] == []
    assert (
        "predictor.query_feat.weight"
        not in build_model(replace(cfg, masked_attention=False)).state_dict()
    )


def test_criterion_and_weights_cover_every_prediction():
    base = apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": "test_resnet"})
    cfg = replace(base, model=replace(base.model, masked_attention=True))
    model = build_model(cfg.model).train()
    out = model(torch.randn(1, 3, 64, 64))
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :32], masks[1, 32:] = True, True
    losses = build_criterion(cfg)(out, [{"labels": torch.tensor([1, 2]), "masks": masks}])
    weights = default_loss_weights(cfg.solver, cfg.model.dec_layers + 1)
    assert set(losses) == set(weights)  # loss_ce, loss_ce_0 (before layer 1), loss_ce_1, ...


def test_checkpoint_round_trip_and_fewer_queries(tmp_path):
    base = apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": "test_resnet"})
    cfg = replace(base, model=replace(base.model, masked_attention=True))
    model = build_model(cfg.model).eval()
    path = save_checkpoint(
        tmp_path / "m.safetensors", model, cfg, generic_meta(cfg.model.num_classes)
    )
    x = torch.randn(1, 3, 64, 64)
    loaded = load_model(path)
    report = loaded.report
    assert not report.missing and not report.unexpected and not report.reinitialised
    with torch.no_grad():
        assert torch.equal(loaded.model(x)["pred_masks"], model(x)["pred_masks"])
    q = cfg.model.num_queries
    fewer = load_model(path, num_queries=q // 2)
    key = "predictor.query_feat.weight"
    assert fewer.report.kept_rows[key] == q // 2
    assert torch.equal(fewer.model.state_dict()[key], model.state_dict()[key][: q // 2])
    with torch.no_grad():
        assert fewer.model(x)["pred_masks"].shape[1] == q // 2


def test_build_model_picks_the_decoder_class():
    """Masked attention is its own predictor class; MaskFormer's predictor has no masked path."""
    from maskformer.model import MaskedAttentionPredictor, TransformerPredictor

    masked = build_model(_model_cfg()).predictor
    plain = build_model(replace(_model_cfg(), masked_attention=False)).predictor
    assert type(masked) is MaskedAttentionPredictor
    assert type(plain) is TransformerPredictor
    assert not hasattr(plain, "query_feat")
    # the same parameter names apart from the learned query features: checkpoints keep their keys
    assert set(masked.state_dict()) - set(plain.state_dict()) == {"query_feat.weight"}
