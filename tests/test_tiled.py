"""Prediction's tiled results against the full-size (dense) official functions on the same logits.

The reference brings every query to full size (``resize_mask_logits``) and runs ``postprocess``'s
dense functions: what Prediction computed before it kept the network's stride-4 logits. Cases:
outputs shaped like a trained model's, random logits, hand-built full-size logits, odd sizes,
padding crops, large upsampling, blocks and chunks forced small so bands split unevenly, and a
random tiny model and the shipped demo model on synthetic images.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskformer.inference.upsample as up
from maskformer.config import apply_overrides, generic_meta, get_preset
from maskformer.data.coco import encode_rle
from maskformer.data.synthetic import generate_sample
from maskformer.inference import Prediction, Predictor
from maskformer.inference.instances import InstanceMasks
from maskformer.inference.postprocess import (
    instance_inference,
    mask_areas,
    panoptic_inference,
    resize_maps,
    resize_mask_logits,
    semantic_inference,
    semantic_map,
)

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo.safetensors"
THRESHOLDS = [(0.8, 0.8), (0.3, 0.5), (0.0, 0.0), (0.99, 0.8)]


def trained_like(q, k, h, w, seed=0):
    """Class logits and (Q, h, w) mask logits like a trained model's: a third of the queries own a
    Voronoi cell with a confident class (some no-object); the rest are unsure and weak."""
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(q, k + 1, generator=g)
    owners = torch.randperm(q, generator=g)[: max(1, q // 3)]
    class_logits[owners, torch.randint(0, k + 1, (len(owners),), generator=g)] += 9.0
    centers = torch.rand(len(owners), 2, generator=g) * torch.tensor([h, w])
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    cell = d.argmin(0)
    mask_logits = torch.randn(q, h, w, generator=g) * 0.5 - 4.0
    for i, o in enumerate(owners.tolist()):
        mask_logits[o] += (cell == i).float() * 10.0
    return class_logits, mask_logits


def random_outputs(q, k, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, k + 1, generator=g) * 3, torch.randn(q, h, w, generator=g) * 4


def _prediction(cl, low, padded, image, out, k, sem_at_input=False, things=None):
    meta = generic_meta(k, thing_ids=tuple(range(k // 2)) if things is None else things)
    return Prediction(
        class_logits=cl,
        mask_logits=low,
        image=np.zeros((*out, 3), np.uint8),
        meta=meta,
        test=get_preset("maskformer_r50_coco_panoptic").test,
        padded_hw=padded,
        image_hw=image,
        semantic_at_input=sem_at_input,
    )


def assert_same_as_dense(pred, thresholds=THRESHOLDS):
    """Every result of ``pred`` equals the dense functions on its materialised full-size logits."""
    cl, meta = pred.class_logits, pred.meta
    full = pred.masks.full()  # the full-size logits: F.interpolate's (see test_upsample)
    probs = full.sigmoid()
    for score, overlap in thresholds:
        ref = panoptic_inference(
            cl, full, thing_ids=meta.thing_ids, object_mask_threshold=score,
            overlap_threshold=overlap, mask_probs=probs,
        )  # fmt: skip
        got = pred.panoptic(score, overlap)
        assert torch.equal(got.panoptic_seg, ref.panoptic_seg)
        assert got.segments == ref.segments
        assert [(d.query, d.label, d.reason) for d in got.dropped] == [
            (d.query, d.label, d.reason) for d in ref.dropped
        ]
    assert torch.equal(pred.mask_areas, mask_areas(probs))
    if pred.semantic_at_input:
        stage1 = resize_mask_logits(pred.mask_logits, pred.padded_hw, pred.image_hw, pred.image_hw)
        sem_probs = resize_maps(stage1.sigmoid(), pred.masks.size)
    else:
        sem_probs = probs
    sem = pred.semantic()
    assert sem.dtype == torch.uint8 and sem.shape == full.shape[1:]
    assert torch.equal(sem.long(), semantic_map(cl, full, mask_probs=sem_probs))
    assert torch.equal(sem.long(), semantic_inference(cl, full, mask_probs=sem_probs).argmax(0))
    for things_only in (False, True):
        things = meta.thing_ids if things_only else None
        ref = instance_inference(cl, full, topk=20, thing_ids=things, mask_probs=probs)
        got = pred.instances(20, things_only)
        assert torch.equal(got.queries, ref.queries) and torch.equal(got.labels, ref.labels)
        torch.testing.assert_close(got.scores, ref.scores, rtol=1e-6, atol=1e-7)
        assert isinstance(got.masks, InstanceMasks) and got.masks.shape == ref.masks.shape
        for i in range(len(ref)):
            assert torch.equal(got.masks[i], ref.masks[i])


@pytest.mark.parametrize(
    "padded,image,out",
    [
        ((256, 256), (256, 256), (256, 256)),  # one stage, as the benchmark's 512 x 512
        ((256, 256), (250, 240), (167, 151)),  # padding cropped, then shrunk
        ((256, 256), (250, 240), (501, 481)),  # padding cropped, then enlarged
        ((128, 192), (128, 171), (375, 502)),  # a photo upsampled from the demo's working size
    ],
)
def test_trained_like_outputs(padded, image, out):
    cl, low = trained_like(40, 30, padded[0] // 4, padded[1] // 4)
    assert_same_as_dense(_prediction(cl, low, padded, image, out, 30))


def test_cached_assignments_across_slider_moves():
    """Re-merges that revisit a kept query set (cached assignment), change only the overlap
    threshold, or come after the cache dropped that set give the dense results."""
    cl, low = trained_like(40, 30, 64, 64, seed=9)
    pred = _prediction(cl, low, (256, 256), (250, 240), (317, 303), 30)
    moves = [(0.8, 0.8), (0.3, 0.5), (0.8, 0.3), (0.3, 0.9), (0.0, 0.0), (0.5, 0.5), (0.6, 0.6)]
    moves += [(0.99, 0.8), (0.2, 0.1), (0.8, 0.8), (0.3, 0.5)]
    assert_same_as_dense(pred, thresholds=moves)
    assert 0 < len(pred._assignments) <= 4


def test_semantic_only_models_take_the_sigmoid_between_the_resizes():
    cl, low = trained_like(30, 20, 64, 96, seed=4)
    for out in [(233, 201), (256, 371), (40, 60)]:
        assert_same_as_dense(_prediction(cl, low, (256, 384), (250, 371), out, 20, True))


@pytest.mark.parametrize("out", [(200, 260), (45, 61), (37, 500)])
def test_random_outputs(out):
    cl, low = random_outputs(20, 9, 24, 32, seed=out[0])
    assert_same_as_dense(_prediction(cl, low, (96, 128), (90, 121), out, 9))
    assert_same_as_dense(_prediction(cl, low, (96, 128), (90, 121), out, 9, True))


def test_blocks_and_chunks_forced_small(monkeypatch):
    """Uneven bands, column splits by query set and many small chunks give the same results."""
    monkeypatch.setattr(up, "BAND_PIXELS", 13 * 423)
    monkeypatch.setattr(up, "BLOCK_COST", 0)  # split columns wherever that saves a value
    monkeypatch.setattr(up, "CHUNK_VALUES", 999)
    monkeypatch.setattr(up.Block.chunks, "__defaults__", (999,))
    cl, low = trained_like(30, 12, 40, 56, seed=5)
    assert_same_as_dense(_prediction(cl, low, (160, 224), (157, 211), (317, 423), 12))


def test_hand_built_full_size_logits():
    """Without padded_hw the logits are full-size: tiles of 16 px over the map itself."""
    cl, full = trained_like(24, 10, 123, 77, seed=6)
    meta = generic_meta(10, thing_ids=(0, 1, 2, 3))
    pred = Prediction(
        class_logits=cl, mask_logits=full, image=np.zeros((123, 77, 3), np.uint8), meta=meta
    )
    assert pred.masks.stages == [] and torch.equal(pred.masks.full(), full)
    assert_same_as_dense(pred)
    with pytest.raises(ValueError, match="padded_hw"):
        Prediction(
            class_logits=cl, mask_logits=full, image=np.zeros((10, 10, 3), np.uint8), meta=meta
        )


def test_cached_remerge_gives_the_same_as_a_fresh_prediction():
    cl, low = trained_like(50, 30, 64, 64, seed=7)
    pred = _prediction(cl, low, (256, 256), (256, 256), (500, 500), 30)
    first = pred.panoptic(0.5, 0.8)
    for score, overlap in [(0.7, 0.6), (0.5, 0.8), (0.2, 0.9)]:
        again = pred.panoptic(score, overlap)
        fresh = _prediction(cl, low, (256, 256), (256, 256), (500, 500), 30).panoptic(
            score, overlap
        )
        assert (
            torch.equal(again.panoptic_seg, fresh.panoptic_seg) and again.segments == fresh.segments
        )
    assert torch.equal(pred.panoptic(0.5, 0.8).panoptic_seg, first.panoptic_seg)
    assert (pred._areas >= 0).sum() < pred.num_queries  # only the queries a merge needed


def test_query_views_and_instance_masks():
    cl, low = trained_like(20, 8, 32, 48, seed=8)
    pred = _prediction(cl, low, (128, 192), (128, 171), (450, 600), 8)
    full = pred.masks.full()
    probs = full.sigmoid()
    for q in (0, 7, 19):  # sigmoid's vector and scalar paths may differ by an ulp
        torch.testing.assert_close(pred.query_probs(q), probs[q], rtol=0, atol=1e-7)
        assert torch.equal(pred.query_mask(q), probs[q] >= 0.5)
        assert pred.query_area(q) == int((probs[q] >= 0.5).sum())
    for x, y in [(0, 0), (599, 449), (123, 321)]:
        torch.testing.assert_close(pred.pixel_probs(x, y), probs[:, y, x], rtol=0, atol=1e-7)
    with pytest.raises(IndexError):
        pred.pixel_probs(600, 0)
    with pytest.raises(IndexError):
        pred.query_probs(20)
    thumbs = pred.thumbnail_probs(36, 48)
    assert thumbs.shape == (20, 36, 48) and 0 <= thumbs.min() and thumbs.max() <= 1
    small = torch.nn.functional.interpolate(probs[None], (36, 48), mode="bilinear", antialias=True)[
        0
    ]
    assert (thumbs - small).abs().mean() < 0.02  # from the small logits, close to the old ones
    inst = pred.instances(10, False)
    masks = inst.masks
    assert len(masks) == len(inst) and masks.shape == (len(inst), 450, 600)
    np.testing.assert_array_equal(masks.numpy()[2], (full[inst.queries[2]] > 0).numpy())
    sub = masks[1:3]
    assert isinstance(sub, InstanceMasks) and torch.equal(sub[0], masks[1])
    assert [m.sum() for m in masks] == [m.sum() for m in masks.numpy()]
    assert encode_rle(masks[0].numpy()) == encode_rle((full[inst.queries[0]] > 0).numpy())


def test_kept_tensors_stay_small():
    """A 3 MP prediction keeps the stride-4 logits and tile bounds, no full-size float map."""
    cl, low = trained_like(20, 8, 32, 48, seed=9)
    pred = _prediction(cl, low, (128, 192), (128, 171), (1500, 2000), 8)
    pred.panoptic(0.5, 0.8)
    pred.semantic()
    pred.instances()
    kept = [pred.mask_logits, pred.masks.source, pred.masks.grid.lo, pred.masks.grid.hi]
    kept += list(pred.masks.grid.prob_bounds)
    assert sum(t.numel() for t in kept) < 20 * 1500 * 2000 // 20  # < 5 % of Q full-size maps
    assert pred.semantic().element_size() == 1  # uint8, not int64


def _synthetic_image(h, w, index):
    scene = generate_sample(index, seed=3, size=256).image  # what `maskformer synth` writes
    return np.asarray(Image.fromarray(scene).resize((w, h), Image.BILINEAR))


@pytest.mark.slow
def test_random_tiny_model_on_synthetic_images(tiny_cfg):
    from maskformer.model import build_model

    cfg = apply_overrides(tiny_cfg, {"input.min_size_test": 96, "input.max_size_test": 160})
    meta = generic_meta(cfg.model.num_classes, thing_ids=(0, 1, 2))
    predictor = Predictor(build_model(cfg.model).eval(), cfg=cfg, meta=meta, device="cpu")
    for i, (h, w) in enumerate([(128, 128), (301, 457)]):
        pred = predictor.predict(_synthetic_image(h, w, i))
        assert pred.padded_hw is not None and pred.masks.size == (h, w)
        assert_same_as_dense(pred, thresholds=[(0.0, 0.0), (0.1, 0.5), (0.3, 0.8)])


@pytest.mark.slow
@pytest.mark.skipif(not DEMO.exists(), reason="no shipped demo checkpoint")
def test_demo_model_on_synthetic_images():
    predictor = Predictor.from_checkpoint(DEMO, device="cpu")
    for i, (h, w) in enumerate([(128, 128), (600, 450)]):
        pred = predictor.predict(_synthetic_image(h, w, 10 + i))
        assert_same_as_dense(pred, thresholds=[(0.5, 0.8), (0.2, 0.5), (0.8, 0.9)])
        assert len(pred.panoptic().segments) >= 2
