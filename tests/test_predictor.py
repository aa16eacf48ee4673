"""Predictor on a random tiny model: pre-processing, sizes, batching, threads, semantic paths."""

import threading
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskformer.config import apply_overrides, generic_meta, get_preset
from maskformer.errors import CheckpointError, ImageReadError, UserError
from maskformer.image_io import load_image
from maskformer.inference import (
    Prediction,
    Predictor,
    pad_batch,
    panoptic_inference,
    resize_mask_logits,
    resize_shortest_edge_shape,
    semantic_map,
)

THINGS = (0, 1, 2, 3, 4)


def _cfg(**overrides):
    base = {"model.backbone": "test_resnet", "input.min_size_test": 64, "input.max_size_test": 96}
    return apply_overrides(get_preset("maskformer_tiny"), {**base, **overrides})


class _Diverse(torch.nn.Module):
    """A random tiny MaskFormer whose queries disagree: a random random network's queries all say
    the same thing, so each query gets a fixed class bias and a Voronoi cell added to its mask."""

    def __init__(self, model: torch.nn.Module, q: int, k: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.model = model
        self.register_buffer("class_bias", torch.randn(q, k + 1, generator=g) * 4)
        self.register_buffer("centers", torch.rand(q, 2, generator=g))

    def forward(self, x: torch.Tensor) -> dict:
        out = dict(self.model(x))
        h, w = out["pred_masks"].shape[-2:]
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        d = (yy - self.centers[:, 0, None, None]) ** 2 + (xx - self.centers[:, 1, None, None]) ** 2
        cell = (d == d.min(0).values).float()  # (Q, h, w)
        out["pred_masks"] = out["pred_masks"] + 10 * cell - 5
        out["pred_logits"] = out["pred_logits"] + self.class_bias
        return out


def _model(cfg, seed=0):
    from maskformer.model import build_model

    torch.manual_seed(seed)
    m = cfg.model
    return _Diverse(build_model(m), m.num_queries, m.num_classes, seed).eval()


@pytest.fixture(scope="module")
def predictor():
    cfg = _cfg()
    return Predictor(_model(cfg), cfg=cfg, meta=generic_meta(8, THINGS), device="cpu")


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_shortest_edge_shape_like_detectron2():
    assert resize_shortest_edge_shape(480, 640, 800, 1333) == (800, 1067)
    assert resize_shortest_edge_shape(640, 480, 800, 1333) == (1067, 800)
    assert resize_shortest_edge_shape(100, 3000, 128, 512) == (17, 512)  # long side capped
    assert resize_shortest_edge_shape(512, 683, 512, 2048) == (512, 683)
    assert resize_shortest_edge_shape(33, 33, 64, 96) == (64, 64)


def test_pad_batch():
    a, b = torch.ones(3, 37, 53), torch.ones(3, 40, 20)
    out = pad_batch([a, b], 32)
    assert out.shape == (2, 3, 64, 64)
    assert out[0, :, :37, :53].eq(1).all() and out[0, :, 37:].eq(0).all()
    assert out[0, :, :, 53:].eq(0).all() and out[1, :, :40, :20].eq(1).all()
    assert pad_batch([a, b], 0).shape == (2, 3, 40, 53)


@pytest.mark.parametrize("hw", [(37, 53), (130, 61), (64, 64), (1, 5)])
def test_prediction_has_the_original_size(predictor, hw):
    img = _image(*hw)
    pred = predictor.predict(img)
    q, k = predictor.cfg.model.num_queries, predictor.cfg.model.num_classes
    assert pred.class_logits.shape == (q, k + 1) and pred.masks.shape == (q, *hw)
    assert pred.mask_logits.shape[0] == q and pred.padded_hw is not None  # the network's size
    assert pred.class_logits.dtype == pred.mask_logits.dtype == torch.float32
    assert pred.mask_logits.device.type == "cpu"
    np.testing.assert_array_equal(pred.image, img)
    assert pred.semantic().shape == hw and pred.semantic().dtype == torch.uint8
    pan = pred.panoptic()
    assert pan.panoptic_seg.shape == hw
    assert pred.instances().masks.shape[1:] == hw
    torch.testing.assert_close(pred.class_probs.sum(-1), torch.ones(q))


def test_matches_the_pipeline_written_out(predictor):
    """Resize with PIL bilinear, normalise, zero-pad to /32, forward, upsample, crop, resize."""
    img = _image(45, 70, seed=3)
    pred = predictor.predict(img)
    cfg = predictor.cfg
    # short side 45 -> 64 makes the long side 99.6 > 96, so both scale down: 61.7 x 96 -> 62 x 96
    assert resize_shortest_edge_shape(45, 70, 64, 96) == (62, 96)
    resized = np.array(Image.fromarray(img).resize((96, 62), Image.BILINEAR))
    mean = torch.tensor(cfg.input.pixel_mean)[:, None, None]
    std = torch.tensor(cfg.input.pixel_std)[:, None, None]
    x = (torch.from_numpy(resized).permute(2, 0, 1).float() - mean) / std
    x = F.pad(x, (0, 0, 0, 64 - 62))[None]  # (1, 3, 64, 96): bottom rows padded with 0
    with torch.no_grad():
        out = predictor.model(x)
    up = F.interpolate(out["pred_masks"], size=(64, 96), mode="bilinear", align_corners=False)
    ref = F.interpolate(up[:, :, :62, :96], size=(45, 70), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pred.masks.full(), ref[0])
    torch.testing.assert_close(pred.mask_logits, out["pred_masks"][0])  # kept at stride 4
    torch.testing.assert_close(pred.class_logits, out["pred_logits"][0])


def test_input_kinds(predictor, tmp_path):
    rgba = np.dstack([_image(30, 40), np.full((30, 40), 7, np.uint8)])
    gray = _image(30, 40)[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    for src in (
        Image.fromarray(rgba, "RGBA"),
        gray,
        tmp_path / "g.png",
        (tmp_path / "g.png").read_bytes(),
    ):
        pred = predictor.predict(src)
        np.testing.assert_array_equal(pred.image, load_image(src))
        assert pred.masks.size == (30, 40)
    a = predictor.predict(gray)
    b = predictor.predict(np.repeat(gray[:, :, None], 3, axis=2))
    torch.testing.assert_close(a.mask_logits, b.mask_logits)
    with pytest.raises(ImageReadError, match="missing.png"):
        predictor.predict(tmp_path / "missing.png")


def test_batch_equals_single_when_padding_agrees(predictor):
    # both resize to 64 x (<= 96) and pad to 64 x 96, so the network sees the same tensors
    imgs = [_image(40, 55, 1), _image(50, 70, 2)]
    batch = predictor.predict_batch(imgs)
    for img, p in zip(imgs, batch):
        single = predictor.predict(img)
        assert p.masks.size == img.shape[:2]
        torch.testing.assert_close(p.masks.full(), single.masks.full(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(p.class_logits, single.class_logits, atol=1e-4, rtol=1e-4)
    assert predictor.predict_batch([]) == []
    mixed = predictor.predict_batch([_image(20, 90), _image(90, 20)])  # padded to the batch max
    assert [p.masks.size for p in mixed] == [(20, 90), (90, 20)]


def test_threads_do_not_interfere(predictor):
    imgs = [_image(40 + 9 * i, 60 - 7 * i, seed=i) for i in range(4)]
    expected = [predictor.predict(im) for im in imgs]
    results: dict[tuple[int, int], Prediction] = {}
    errors = []

    def work(t):
        try:
            for r in range(3):
                i = (t + r) % len(imgs)
                results[(t, r)] = (i, predictor.predict(imgs[i]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(results) == 12
    for i, pred in results.values():
        np.testing.assert_array_equal(pred.image, imgs[i])
        torch.testing.assert_close(pred.mask_logits, expected[i].mask_logits)
        assert torch.equal(pred.panoptic().panoptic_seg, expected[i].panoptic().panoptic_seg)
    stateless = ("device", "dtype", "model", "cfg", "meta", "backend")
    assert not [k for k in vars(predictor) if k not in stateless]


def test_default_thresholds_and_things_come_from_the_checkpoint():
    cfg = _cfg(**{"test.object_mask_threshold": 0.3, "test.overlap_threshold": 0.6})
    meta = generic_meta(8, THINGS)
    pred = Predictor(_model(cfg), cfg=cfg, meta=meta, device="cpu").predict(_image(50, 50))
    ref = panoptic_inference(
        pred.class_logits,
        pred.masks.full(),  # the full-size logits, materialised
        thing_ids=THINGS,
        object_mask_threshold=0.3,
        overlap_threshold=0.6,
    )
    got = pred.panoptic()
    assert torch.equal(got.panoptic_seg, ref.panoptic_seg) and got.segments == ref.segments
    assert len(got.segments) > 2 and len(got.dropped) > 0
    assert {s["isthing"] for s in got.segments} <= {True, False}
    for s in got.segments:
        assert s["isthing"] == (s["category_id"] in THINGS)
    other = pred.panoptic(object_mask_threshold=0.99)
    assert all(s["score"] > 0.99 for s in other.segments)
    inst = pred.instances()
    assert len(inst) > 0 and set(inst.labels.tolist()) <= set(
        THINGS
    )  # panoptic_on: things only, as Mask2Former
    assert len(pred.instances(topk=3)) <= 3


def test_semantic_paths_follow_the_official_rule():
    import transformers

    # semantic model (panoptic off): (K, H, W) scores are resized to the original size
    cfg = _cfg(**{"test.panoptic_on": False, "test.instance_on": False})
    meta = generic_meta(8)
    p = Predictor(_model(cfg, seed=1), cfg=cfg, meta=meta, device="cpu")
    pred = p.predict(_image(50, 75, seed=5))
    assert pred.semantic_at_input and pred.image_hw == (64, 96)
    # the logits at the network's input size (upsampled, padding cropped)
    input_logits = resize_mask_logits(pred.mask_logits, pred.padded_hw, (64, 96), (64, 96))
    hf = transformers.MaskFormerImageProcessor().post_process_semantic_segmentation(
        types.SimpleNamespace(
            class_queries_logits=pred.class_logits[None],
            masks_queries_logits=input_logits[None],
        ),
        target_sizes=[(50, 75)],
        return_segmentation_scores=True,
    )[0]
    ours = pred.semantic()
    mismatch = (ours.long() != hf["segmentation"]).nonzero().tolist()
    scores = hf["segmentation_scores"]
    for y, x in mismatch:  # only float near-ties may differ
        mine, theirs = int(ours[y, x]), int(hf["segmentation"][y, x])
        assert abs(float(scores[mine, y, x] - scores[theirs, y, x])) < 1e-5
    assert len(mismatch) <= 5
    # the other path (resize logits first) gives a different map in general
    before = semantic_map(pred.class_logits, pred.masks.full())
    assert before.shape == ours.shape
    # panoptic model: logits are resized first; the semantic map uses them directly
    cfg2 = _cfg()
    pred2 = Predictor(_model(cfg2), cfg=cfg2, meta=generic_meta(8, THINGS), device="cpu").predict(
        _image(50, 75, seed=5)
    )
    assert not pred2.semantic_at_input
    full = pred2.masks.full()
    assert torch.equal(pred2.semantic().long(), semantic_map(pred2.class_logits, full))


def test_bf16_autocast_stays_close_to_fp32():
    from maskformer.model import build_model

    cfg = _cfg()
    model = build_model(cfg.model)
    meta = generic_meta(8, THINGS)
    p32 = Predictor(model, cfg=cfg, meta=meta, device="cpu")
    pbf = Predictor(model, cfg=cfg, meta=meta, device="cpu", dtype="bf16")
    img = _image(40, 40)
    a, b = p32.predict(img), pbf.predict(img)
    assert b.mask_logits.dtype == torch.float32 and b.mask_logits.shape == a.mask_logits.shape
    assert (a.mask_logits - b.mask_logits).abs().mean() < 0.1 * a.mask_logits.abs().mean() + 0.1


def test_channels_last_is_opt_in_and_agrees_with_nchw():
    from maskformer.model import build_model

    cfg = _cfg()
    meta = generic_meta(8, THINGS)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    nchw = Predictor(model, cfg=cfg, meta=meta, device="cpu")
    first = next(m.weight for m in nchw.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.is_contiguous()  # the default leaves the caller's model as it was
    img = _image(50, 70)
    a = nchw.predict(img).mask_logits
    nhwc = Predictor(model, cfg=cfg, meta=meta, device="cpu", channels_last=True)
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    b = nhwc.predict(img).mask_logits
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_bad_checkpoints_and_wrong_types(tmp_path):
    cfg, meta = _cfg(), generic_meta(8)
    with pytest.raises(TypeError, match=r"nn.Module, got int; .*Predictor.from_checkpoint"):
        Predictor(42, cfg=cfg, meta=meta)
    with pytest.raises(TypeError, match=r"got the path .*Predictor.from_checkpoint\(path\)"):
        Predictor("model.safetensors", cfg=cfg, meta=meta)
    with pytest.raises(TypeError, match=r"unpack it: Predictor\(model, cfg=cfg, meta=meta\)"):
        Predictor((_model(cfg), cfg, meta))
    with pytest.raises(TypeError, match="cfg=dict"):
        Predictor(_model(cfg), cfg={}, meta=meta)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        Predictor.from_checkpoint(tmp_path / "notes.txt", device="cpu")
    with pytest.raises(CheckpointError, match="classes"):
        Predictor(_model(cfg), cfg=cfg, meta=generic_meta(5), device="cpu")
    with pytest.raises(UserError, match="dtype"):
        Predictor(_model(cfg), cfg=cfg, meta=generic_meta(8), device="cpu", dtype="int8")
    with pytest.raises(UserError, match="device"):
        Predictor(_model(cfg), cfg=cfg, meta=generic_meta(8), device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            Predictor(_model(cfg), cfg=cfg, meta=generic_meta(8), device="cuda")


def test_prediction_is_a_plain_container():
    """Other code (the app, evaluation) may build a Prediction from cached tensors."""
    meta = replace(generic_meta(3, (0,)), name="x")
    cls = torch.tensor([[4.0, 0, 0, 0], [0, 0, 4.0, 0]])
    m = torch.full((2, 4, 6), -5.0)
    m[0, :, :3] = 5
    m[1, :, 3:] = 5
    pred = Prediction(
        class_logits=cls, mask_logits=m, image=np.zeros((4, 6, 3), np.uint8), meta=meta
    )
    assert pred.semantic().tolist() == [[0, 0, 0, 2, 2, 2]] * 4
    pan = pred.panoptic(object_mask_threshold=0.5)
    assert [(s["category_id"], s["isthing"], s["area"]) for s in pan.segments] == [
        (0, True, 12),
        (2, False, 12),
    ]
