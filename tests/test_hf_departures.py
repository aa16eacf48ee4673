"""Three more places where HF's ``MaskFormerImageProcessor`` departs from the official code.

``tests/test_postprocess.py`` pins six others. These concern the sizes the official code works at
(detectron2: upsample the stride-4 mask *logits* to the padded input, crop the padding, resize to
the original image; our ``resize_mask_logits``), where HF works at stride 4:

- panoptic with ``target_sizes``: HF resizes the stride-4 mask *probabilities* of the whole padded
  input to the target size, padding included, so on a padded image every boundary shifts towards
  the top-left (352 of 2048 pixels in the first test; 62,220 of 307,200 change class on the
  480 x 640 photo of the second);
- semantic: HF multiplies class and mask probabilities at stride 4 and resizes the scores; the
  official code takes the sigmoid after upsampling the logits, so boundaries move by pixels;
- instance: HF binarises (logit > 0) and scores at stride 4, then nearest-resizes the binary
  masks (blocky, 4-pixel steps); the official code binarises and scores at the output size.

Each test builds a case with a known official answer, checks ours gives it, and shows what HF
gives instead.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from maskformer.inference.postprocess import (
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_map,
)


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.MaskFormerImageProcessor()


def _hf_out(class_logits, mask_logits):
    return types.SimpleNamespace(
        class_queries_logits=class_logits[None], masks_queries_logits=mask_logits[None]
    )


def _sure(labels: list[int], k: int) -> torch.Tensor:
    """(Q, K+1) logits giving probability 1.0 (in float32) to each label."""
    out = torch.full((len(labels), k + 1), -40.0)
    out[torch.arange(len(labels)), torch.tensor(labels)] = 0.0
    return out


def test_panoptic_hf_stretches_the_padding_into_the_image(hf):
    # A 32 x 64 image in a 32 x 96 padded input: stride-4 masks are 8 x 24, the image the left 16.
    # q0 (stuff 0) owns the image's left half, q1 (stuff 1) its right half and the padding.
    m = torch.full((2, 8, 24), -10.0)
    m[0, :, :8] = 10.0
    m[1, :, 8:] = 10.0
    cls = _sure([0, 1], 2)
    official = resize_mask_logits(m, (32, 96), (32, 64), (32, 64))  # (2, 32, 64)
    ours = panoptic_inference(cls, official, thing_ids=[], object_mask_threshold=0.5)
    seg = ours.panoptic_seg
    assert (seg[:, :32] == 1).all() and (seg[:, 32:] == 2).all()  # the boundary at x = 32
    theirs = hf.post_process_panoptic_segmentation(
        _hf_out(cls, m), threshold=0.5, label_ids_to_fuse=set(), target_sizes=[(32, 64)]
    )[0]["segmentation"]
    hf_ids = {int(v) for v in theirs.unique()}
    assert len(hf_ids) == 2
    # HF maps the 24 stride-4 columns (image + padding) onto the 64 image columns: its boundary
    # lands at 8 / 24 * 64 = 21.3, so 11 columns of every row change owner.
    left = theirs[0] == theirs[0, 0]
    assert int(left.sum()) in (21, 22)
    differ = int(((seg == 1) != (theirs == theirs[0, 0])).sum())
    assert differ == 32 * (32 - int(left.sum())) and differ >= 320


def test_panoptic_hf_differs_by_thousands_of_pixels_on_a_padded_photo(hf):
    # Random smooth masks of a 480 x 640 photo resized to 384 x 512 inside a 416 x 544 input
    # (a batch partner made it larger): official vs HF at the photo's size.
    g = torch.Generator().manual_seed(0)
    q, k, h, w = 12, 6, 104, 136
    centers = torch.rand(q, 2, generator=g) * torch.tensor([h, w])
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    own = F.one_hot(d.argmin(0), q).permute(2, 0, 1).float()  # (Q, h, w) Voronoi cells
    m = F.avg_pool2d(8 * own - 4, 5, stride=1, padding=2)  # smooth boundaries
    cls = torch.randn(q, k + 1, generator=g)
    cls[torch.arange(q), torch.arange(q) % k] += 6
    official = resize_mask_logits(m, (416, 544), (384, 512), (480, 640))
    ours = panoptic_inference(cls, official, thing_ids=[], object_mask_threshold=0.5)
    assert len(ours.segments) == k  # one stuff segment per class
    theirs = hf.post_process_panoptic_segmentation(
        _hf_out(cls, m), threshold=0.5, label_ids_to_fuse=set(), target_sizes=[(480, 640)]
    )[0]
    ours_cat = _category_map(ours.panoptic_seg, {s["id"]: s["category_id"] for s in ours.segments})
    hf_cat = _category_map(
        theirs["segmentation"], {s["id"]: s["label_id"] for s in theirs["segments_info"]}
    )
    differ = int((ours_cat != hf_cat).sum())
    print(f"pixels whose class differs: {differ} of {480 * 640}")
    assert differ > 5000
    # Without padding (the image fills the input) the two agree but for the probability-vs-logit
    # resize already pinned in test_postprocess.py: the padding is what moves thousands of pixels.
    same = resize_mask_logits(m, (416, 544), (416, 544), (480, 640))
    ours2 = panoptic_inference(cls, same, thing_ids=[], object_mask_threshold=0.5)
    ours2_cat = _category_map(
        ours2.panoptic_seg, {s["id"]: s["category_id"] for s in ours2.segments}
    )
    assert int((ours2_cat != hf_cat).sum()) < differ // 10


def _category_map(seg: torch.Tensor, id_to_cat: dict[int, int]) -> torch.Tensor:
    lut = torch.full((int(seg.max()) + 2,), -1, dtype=torch.int64)
    for i, c in id_to_cat.items():
        lut[i] = c
    return lut[seg.long().clamp(min=-1)]


def test_semantic_hf_takes_the_sigmoid_at_stride_4(hf):
    # Two cells across: q0 (class 0) logits 8 then -2, q1 (class 1) logit 0 (probability 0.5)
    # everywhere. Official: upsample the logits 4x, then sigmoid: class 0 wins while the
    # interpolated logit is > 0, up to 0.8 of the way, x < 4.7. HF: interpolate the stride-4
    # scores sigmoid(8) -> sigmoid(-2), which cross 0.5 at 0.57 of the way, x < 3.77.
    m = torch.zeros(2, 2, 2)
    m[0, :, 0], m[0, :, 1] = 8.0, -2.0
    cls = _sure([0, 1], 2)
    official = resize_mask_logits(m, (8, 8), (8, 8), (8, 8))
    ours = semantic_map(cls, official)
    assert ours[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    theirs = hf.post_process_semantic_segmentation(_hf_out(cls, m), target_sizes=[(8, 8)])[0]
    assert theirs[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # pixel 4 changes class
    assert int((ours != theirs).sum()) == 8  # one column of 8 rows


def test_instance_hf_binarises_at_stride_4_then_nearest_resizes(hf):
    # One query whose logits fall along a diagonal ramp on a 4 x 4 stride-4 grid (16 x 16 image).
    yy, xx = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    m = (3.1 - xx - yy)[None] * 2.0  # (1, 4, 4): > 0 on cells with x + y <= 3
    cls = _sure([0], 1)
    official = resize_mask_logits(m, (16, 16), (16, 16), (16, 16))
    ours = instance_inference(cls, official, topk=1)
    want = official[0] > 0
    assert torch.equal(ours.masks[0], want)  # binarised at the output size: a smooth diagonal
    inside = official[0].sigmoid()[want]
    assert ours.scores[0] == pytest.approx(float(inside.mean()), rel=1e-6)
    theirs = hf.post_process_instance_segmentation(
        _hf_out(cls, m), threshold=0.0, target_sizes=[(16, 16)], return_binary_maps=True
    )[0]
    hf_mask = theirs["segmentation"][0].bool()
    blocky = F.interpolate((m > 0).float()[None], size=(16, 16), mode="nearest")[0, 0].bool()
    assert torch.equal(hf_mask, blocky)  # 4 x 4 blocks, a staircase
    assert int((hf_mask != want).sum()) >= 16
    stride4 = float(m.sigmoid()[m > 0].mean())
    assert theirs["segments_info"][0]["score"] == pytest.approx(stride4, abs=1e-5)
    assert abs(stride4 - float(ours.scores[0])) > 1e-3  # the scores differ too
