"""Extended models (maskformer.model.extension): the base network kept bit for bit, an expert head
for the classes a fine-tune added, and the merge of their query sets."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from maskformer.__main__ import main
from maskformer.checkpoint import (
    extend_checkpoint,
    load_checkpoint,
    save_base_checkpoint,
    save_checkpoint,
)
from maskformer.config import Config
from maskformer.data.synthetic import synthetic_meta
from maskformer.errors import CheckpointError
from maskformer.inference import Predictor
from maskformer.model import build_model
from maskformer.model.extension import ExtendedMaskFormer, merge_logits
from maskformer.partial_load import resize_meta


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1)


def test_merge_keeps_the_base_answers_where_the_expert_claims_nothing():
    torch.manual_seed(0)
    b, qb, qe, k_old, k, h = 2, 4, 3, 3, 5, 8
    base_logits, base_masks = torch.randn(b, qb, k_old + 1), torch.randn(b, qb, h, h)
    expert_logits = torch.randn(b, qe, k + 1)
    expert_logits[..., k_old:k] = -20.0  # no added class anywhere
    expert_masks = torch.randn(b, qe, h, h)
    p = _probs(merge_logits(base_logits, base_masks, expert_logits, expert_masks, k_old, 0.5, 0.5))
    assert p.shape == (b, qb + qe, k + 1)
    want = _probs(base_logits)
    torch.testing.assert_close(p[:, :qb, :k_old], want[..., :k_old])
    torch.testing.assert_close(p[:, :qb, k], want[..., k_old])
    assert p[:, :qb, k_old:k].max() < 1e-20  # the base never predicts a class it lacks
    assert p[:, qb:, :k].max() < 1e-6 and p[:, qb:, k].min() > 1 - 1e-6  # expert: no object


def test_a_base_query_on_a_kept_expert_mask_yields_and_one_elsewhere_stays():
    k_old, k, h = 2, 3, 8
    left = torch.full((h, h), -5.0)
    left[:, : h // 2] = 5.0  # left half
    right = -left
    base_logits = torch.tensor([[[4.0, 0.0, -2.0], [0.0, 4.0, -2.0]]])  # (1, 2, K_old + 1)
    base_masks = torch.stack([left, right])[None]  # query 0 on the left, query 1 on the right
    expert_logits = torch.tensor([[[-5.0, -5.0, 6.0, 0.0], [-5.0, -5.0, 0.0, 0.0]]])
    expert_masks = torch.stack([left, right])[None]  # query 0 (kept) claims the left half
    p = _probs(
        merge_logits(base_logits, base_masks, expert_logits, expert_masks, k_old, 0.6, 0.5, 0.15)
    )
    assert p[0, 0, k] > 1 - 1e-6  # base query 0 gave way
    torch.testing.assert_close(
        p[0, 1],
        torch.cat([_probs(base_logits)[0, 1, :2], torch.zeros(1), _probs(base_logits)[0, 1, 2:]]),
    )
    added = _probs(expert_logits)[0, 0, 2]
    torch.testing.assert_close(
        p[0, 2],
        torch.stack([torch.tensor(0.0), torch.tensor(0.0), added, 1 - added]),
        atol=1e-7,
        rtol=0,
    )
    assert p[0, 3, k] > 1 - 1e-6  # expert query 1 (added class 0.5 < 0.6) is not kept


def test_a_base_query_surer_than_the_expert_by_more_than_the_margin_stays():
    k_old, h = 2, 8
    mask = torch.full((1, 1, h, h), 5.0)
    base_logits = torch.tensor([[[6.0, 0.0, 0.0]]])  # class 0 with p ~ 0.995
    for added_logit, margin, gives_way in ((2.0, 0.15, False), (2.0, 0.5, True), (9.0, 0.0, True)):
        expert_logits = torch.tensor([[[0.0, 0.0, added_logit, 0.0]]])
        p = _probs(merge_logits(base_logits, mask, expert_logits, mask, k_old, 0.5, 0.5, margin))
        assert bool(p[0, 0, -1] > 1 - 1e-6) is gives_way, (added_logit, margin)


def test_of_two_kept_expert_queries_on_one_object_only_the_surer_counts():
    # Two expert queries on the same object split its pixels in the panoptic merge, and both are
    # then dropped for keeping too little of their masks: the less sure one is a duplicate.
    k_old, h = 2, 8
    left = torch.full((h, h), -5.0)
    left[:, : h // 2] = 5.0  # 32 pixels
    wider = torch.full((h, h), -5.0)
    wider[:, : h // 2 + 1] = 5.0  # 40 pixels: IoU 0.8 with `left`
    right = torch.full((h, h), -5.0)
    right[:, h // 2 + 2 :] = 5.0  # no overlap
    base_logits = torch.tensor([[[0.0, 0.0, 9.0]]])  # one base query, no object
    base_masks = right[None, None]
    expert_logits = torch.tensor(
        [[[-9.0, -9.0, 2.0, 0.0], [-9.0, -9.0, 3.0, 0.0], [-9.0, -9.0, 1.0, 0.0]]]
    )  # added-class p 0.88, 0.95, 0.73: all kept at 0.5
    expert_masks = torch.stack([left, wider, right])[None]
    added = _probs(expert_logits)[0, :, 2]
    for duplicate, counted in ((0.5, [False, True, True]), (0.9, [True, True, True])):
        logits = merge_logits(
            base_logits, base_masks, expert_logits, expert_masks, k_old, 0.5, 0.5, 0.15, duplicate
        )
        got = _probs(logits)[0, 1:, 2]
        want = torch.where(torch.tensor(counted), added, torch.zeros(3))
        torch.testing.assert_close(got, want, atol=1e-7, rtol=0)
    # a tie goes to the earlier query
    tie = torch.tensor([[[-9.0, -9.0, 2.0, 0.0], [-9.0, -9.0, 2.0, 0.0]]])
    p = _probs(
        merge_logits(base_logits, base_masks, tie, torch.stack([left, left])[None], 2, 0.5, 0.5)
    )
    assert p[0, 1, 2] > 0.8 and p[0, 2, 2] < 1e-20


def _pair(tmp_path, tiny_cfg):
    """A base checkpoint (3 classes) and an 'expert' (4 classes) with the base's backbone."""
    meta = synthetic_meta()
    k_old = 3
    base_cfg = replace(tiny_cfg, model=replace(tiny_cfg.model, num_classes=k_old))
    base = build_model(base_cfg.model).eval()
    base_path = save_checkpoint(tmp_path / "base.safetensors", base, base_cfg, resize_meta(meta, 3))
    expert_cfg = replace(tiny_cfg, model=replace(tiny_cfg.model, num_classes=k_old + 1))
    expert = build_model(expert_cfg.model).eval()
    expert.backbone.load_state_dict(base.backbone.state_dict())
    with torch.no_grad():
        expert.predictor.class_embed.bias[k_old] = -30.0  # the added class never wins
    names = (*meta.class_names[:k_old], "cross")
    expert_meta = replace(
        resize_meta(meta, k_old + 1), class_names=names, isthing=(*meta.isthing[:k_old], True)
    )
    expert_path = save_checkpoint(tmp_path / "expert.safetensors", expert, expert_cfg, expert_meta)
    return base, base_path, expert_path


def test_an_extended_checkpoint_gives_the_base_predictions_where_the_expert_finds_nothing(
    tmp_path, tiny_cfg
):
    base, base_path, expert_path = _pair(tmp_path, tiny_cfg)
    out = extend_checkpoint(base_path, expert_path, tmp_path / "ext.safetensors")
    ckpt = load_checkpoint(out)
    assert ckpt.cfg.model.base_classes == 3 and ckpt.cfg.model.num_classes == 4
    assert ckpt.meta.class_names[3] == "cross"
    assert ckpt.extra["base"] == str(base_path) and ckpt.extra["expert"] == str(expert_path)
    assert not any(k.startswith("expert.backbone") for k in ckpt.state_dict)  # shared backbone
    pred = Predictor.from_checkpoint(out)
    assert isinstance(pred.model, ExtendedMaskFormer)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    got = pred.predict(image)
    want = Predictor.from_checkpoint(base_path).predict(image)
    qb = want.num_queries
    assert got.num_queries == qb + tiny_cfg.model.num_queries
    torch.testing.assert_close(got.mask_logits[:qb], want.mask_logits)
    torch.testing.assert_close(got.class_probs[:qb, :3], want.class_probs[:, :3])
    assert got.panoptic().segments == want.panoptic().segments
    # the base comes back out unchanged, tensor for tensor
    back = load_checkpoint(save_base_checkpoint(out, tmp_path / "back.safetensors"))
    assert back.cfg.model == load_checkpoint(base_path).cfg.model
    assert back.meta.class_names == load_checkpoint(base_path).meta.class_names
    for key, value in base.state_dict().items():
        assert torch.equal(back.state_dict[key], value), key


def test_extending_refuses_what_is_not_a_frozen_backbone_fine_tune_of_the_base(tmp_path, tiny_cfg):
    _base, base_path, expert_path = _pair(tmp_path, tiny_cfg)
    ext = extend_checkpoint(base_path, expert_path, tmp_path / "ext.safetensors")
    with pytest.raises(CheckpointError, match="extended model already"):
        extend_checkpoint(ext, expert_path, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="adds no class"):
        extend_checkpoint(base_path, base_path, tmp_path / "x.safetensors")
    moved = load_checkpoint(expert_path)
    key = next(k for k in moved.state_dict if k.startswith("backbone.") and "weight" in k)
    moved.state_dict[key] = moved.state_dict[key] + 1
    save_checkpoint(tmp_path / "moved.safetensors", moved.state_dict, moved.cfg, moved.meta)
    with pytest.raises(CheckpointError, match="solver.freeze=backbone"):
        extend_checkpoint(base_path, tmp_path / "moved.safetensors", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_an_extended_model_is_not_trained(tmp_path, tiny_cfg, capsys):
    _base, base_path, expert_path = _pair(tmp_path, tiny_cfg)
    ext = extend_checkpoint(base_path, expert_path, tmp_path / "ext.safetensors")
    model = Predictor.from_checkpoint(ext).model
    model.train()
    with pytest.raises(RuntimeError, match="is for inference"):
        model(torch.zeros(1, 3, 64, 64))
    code = main(
        ["train", "--init", str(ext), "--train", str(tmp_path), "--out", str(tmp_path / "r")]
    )
    assert code != 0
    assert "is an extended model" in capsys.readouterr().err


def test_extension_config_defaults_describe_a_plain_model():
    m = Config().model
    assert m.base_classes == 0 and 0 < m.expert_threshold < 1 and 0 < m.expert_overlap < 1
    assert 0 <= m.expert_margin < 1


def test_an_extended_model_exports_to_onnx_and_matches(tmp_path, tiny_cfg, capsys):
    pytest.importorskip("onnxruntime")
    _base, base_path, expert_path = _pair(tmp_path, tiny_cfg)
    ext = extend_checkpoint(base_path, expert_path, tmp_path / "ext.safetensors")
    assert main(["export-onnx", str(ext), str(tmp_path / "ext.onnx")]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
