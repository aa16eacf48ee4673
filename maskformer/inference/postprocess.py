"""Post-processing: turn per-query class and mask logits into semantic, panoptic and instance results.

Pure functions on tensors (no model, no state), shared by the Predictor, evaluation and the app, so the
number evaluated is the number the user sees. They follow the official MaskFormer code
(``mask_former_model.py``: ``semantic_inference``, ``panoptic_inference``; Mask2Former's
``instance_inference``). Where Hugging Face ``transformers`` departs from it, a comment says how.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskformer.contracts import Segment

DROP_REASONS = ("no-object", "below-threshold", "overlap", "empty")


@dataclass
class DroppedQuery:
    """A query that did not become a panoptic segment, and why.

    ``reason`` is one of: "no-object" (its best class is the no-object class K), "below-threshold"
    (best class probability <= object_mask_threshold), "empty" (it wins no pixel in the argmax, or no
    pixel of its own mask has probability >= 0.5), "overlap" (it keeps less than overlap_threshold of
    its own mask after the argmax: occluded by other queries; its pixels stay void).
    """

    query: int
    label: int
    score: float
    reason: str


@dataclass
class PanopticResult:
    panoptic_seg: torch.Tensor  # (H, W) int32 segment ids; 0 = void
    segments: list[Segment]  # id, category_id (contiguous), isthing, score, query, area
    dropped: list[DroppedQuery]  # every query that produced no segment, in query order


@dataclass
class InstanceResult:
    masks: torch.Tensor  # (N, H, W) bool
    labels: torch.Tensor  # (N,) int64 contiguous class ids
    scores: torch.Tensor  # (N,) float32: class probability x mean mask probability inside the mask
    queries: torch.Tensor  # (N,) int64 source query of each instance

    def __len__(self) -> int:
        return int(self.labels.numel())


def resize_mask_logits(
    pred_masks: torch.Tensor,
    padded_hw: tuple[int, int],
    image_hw: tuple[int, int],
    output_hw: tuple[int, int],
) -> torch.Tensor:
    """Bring stride-4 mask logits to the original image size, in the official order.

    Upsample to the padded input size, crop the padding away (keeping the resized image's
    ``image_hw``), then resize to ``output_hw`` (the original image size). Bilinear with
    ``align_corners=False`` on logits, as detectron2's ``sem_seg_postprocess`` does.

    Args:
        pred_masks: (Q, h, w) mask logits at 1/4 of the padded input.
        padded_hw: (Hp, Wp) size of the padded network input.
        image_hw: (Hi, Wi) size of the resized image inside the padded input.
        output_hw: (H0, W0) size to return.

    Returns:
        (Q, H0, W0) mask logits, same dtype as the input.
    """
    x = F.interpolate(
        pred_masks[None], size=tuple(padded_hw), mode="bilinear", align_corners=False
    )[0]  # (Q, Hp, Wp)
    x = x[:, : image_hw[0], : image_hw[1]]  # (Q, Hi, Wi)
    return resize_maps(x, output_hw)


def resize_maps(x: torch.Tensor, output_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (C, h, w) maps to (C, H, W); no-op at equal size."""
    if tuple(x.shape[-2:]) == tuple(output_hw):
        return x
    return F.interpolate(x[None], size=tuple(output_hw), mode="bilinear", align_corners=False)[0]


def class_probs(class_logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the K+1 classes (no-object included). (Q, K+1) -> (Q, K+1) float32."""
    return class_logits.float().softmax(-1)


def semantic_inference(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, *, mask_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-class scores S[c] = sum_q softmax(z_q)[c] * sigmoid(m_q); no thresholds.

    The no-object column is dropped after the softmax over K+1 classes.

    Args:
        class_logits: (Q, K+1).
        mask_logits: (Q, H, W).
        mask_probs: optional precomputed ``mask_logits.sigmoid()`` (Q, H, W), float32.

    Returns:
        (K, H, W) float32 scores; the semantic map is their argmax over K.
    """
    probs = class_probs(class_logits)[:, :-1]  # (Q, K)
    m = _mask_probs(mask_logits, mask_probs)
    q, h, w = m.shape
    return (probs.T @ m.reshape(q, h * w)).reshape(-1, h, w)  # (K, H, W)


def semantic_map(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    mask_probs: torch.Tensor | None = None,
    chunk: int = 1 << 13,
) -> torch.Tensor:
    """The semantic map ``semantic_inference(...).argmax(0)``, computed without the full (K, H, W).

    Exact shortcut for peaked class probabilities (a trained model: most queries say no-object):
    "candidate" classes (some query gives them probability >= 0.1) are scored over the
    "significant" queries only (some candidate probability >= 0.1), giving lower bounds ``A_c``. Two
    bound rows cover the rest: ``E1 = sum_q r_q m_q`` over the other queries (``r_q`` their largest
    candidate probability) and ``E2 = sum_q t_q m_q`` (``t_q`` the largest non-candidate probability).
    Where ``A_best > max(A_second + E1, E2)`` by more than rounding, ``best`` is the argmax; other
    pixels are scored over all K. Random logits fall back to the dense product.

    Args:
        class_logits: (Q, K+1).
        mask_logits: (Q, H, W).
        mask_probs: optional precomputed ``mask_logits.sigmoid()`` (Q, H, W), float32.
        chunk: pixels per block (bounds the temporary memory and keeps blocks in cache).

    Returns:
        (H, W) int64 class ids (ties go to the lower class id, as ``argmax`` does).
    """
    probs = class_probs(class_logits)[:, :-1]  # (Q, K)
    m = _mask_probs(mask_logits, mask_probs)
    q, h, w = m.shape
    flat = m.reshape(q, h * w)  # (Q, HW)
    full_t = probs.T.contiguous()  # (K, Q)
    plan = _sparse_plan(probs, tau=0.1)
    out = torch.empty(h * w, dtype=torch.int64)
    for start in range(0, h * w, chunk):
        block = flat[:, start : start + chunk]  # (Q, n)
        if plan is None:
            out[start : start + chunk] = first_argmax(full_t @ block)
            continue
        cand, rows, a_weights, e_weights = plan
        a = a_weights @ block.index_select(0, rows)  # (C, n) lower bounds of candidate scores
        e1, e2 = e_weights @ block  # (n,), (n,) upper bounds of what A misses
        best, arg, exact = _packed_argmax(a)
        rival = e2
        if len(cand) > 1:
            second = a.scatter_(0, arg[None], float("-inf")).amax(0)
            rival = torch.maximum(second + e1, e2)
        labels = cand[arg]
        unsure = (~exact | (best <= rival + (1e-4 * best + 1e-6))).nonzero()[:, 0]
        if unsure.numel():
            labels[unsure] = first_argmax(full_t @ block[:, unsure])
        out[start : start + chunk] = labels
    return out.reshape(h, w)


def _sparse_plan(probs: torch.Tensor, tau: float) -> tuple | None:
    """Candidates, significant queries and weights for ``semantic_map``; None: use the dense path."""
    q, k = probs.shape
    cand = (probs.amax(0) >= tau).nonzero()[:, 0]  # (C,) ascending
    if cand.numel() == 0 or cand.numel() > k // 2:
        return None
    sub = probs[:, cand]  # (Q, C)
    sub_max = sub.amax(1)  # (Q,)
    rows = (sub_max >= tau).nonzero()[:, 0]  # (Qb,)
    r = sub_max.clone()
    r[rows] = 0.0
    non_cand = torch.ones(k, dtype=torch.bool)
    non_cand[cand] = False
    t = probs[:, non_cand].amax(1) if bool(non_cand.any()) else torch.zeros(q)
    return cand, rows, sub[rows].T.contiguous(), torch.stack([r, t])  # (C, Qb), (2, Q)


def mask_areas(mask_probs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels with probability >= 0.5 per query (threshold-free, so a Prediction caches it).

    Args:
        mask_probs: (Q, H, W) probabilities.
        rows: optional (R,) query indices; default all queries.

    Returns:
        (R,) or (Q,) int64 areas.
    """
    q = mask_probs.shape[0]
    flat = mask_probs.reshape(q, -1)  # (Q, HW)
    rows = torch.arange(q) if rows is None else rows
    out = torch.empty(rows.numel(), dtype=torch.int64)
    for sl in _row_blocks(rows.numel(), flat.shape[1]):
        out[sl] = (flat.index_select(0, rows[sl]) >= 0.5).sum(1)
    return out


def _row_blocks(n_rows: int, row_len: int, budget: int = 1 << 20) -> list[slice]:
    """Row slices whose temporaries hold about ``budget`` elements.

    Why: on CPU a fresh tensor above glibc's mmap threshold (32 MB at most) is page-faulted in on
    every call, which costs more than the arithmetic; small blocks reuse the same memory.
    """
    step = max(1, budget // max(1, row_len))
    return [slice(s, s + step) for s in range(0, n_rows, step)]


def panoptic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    thing_ids: Iterable[int],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    mask_probs: torch.Tensor | None = None,
    areas: torch.Tensor | None = None,
) -> PanopticResult:
    """The official MaskFormer panoptic ("general") inference.

    Keep queries whose best class (softmax over K+1) is not no-object and scores above
    ``object_mask_threshold``; assign each pixel to the kept query with the largest
    ``score * sigmoid(mask)``; walk the kept queries in query order and drop one whose assigned area
    is below ``overlap_threshold`` times its own mask area (pixels with sigmoid >= 0.5), leaving its
    pixels void; stuff classes are merged into their first segment; ids are 1, 2, 3, ...

    How Hugging Face ``post_process_panoptic_segmentation`` differs (transformers 5.x):
    - its "original area" counts ``score * sigmoid(mask) >= mask_threshold`` (the score-weighted
      probability) where the official code counts ``sigmoid(mask) >= 0.5``;
    - it drops a segment when ``area / orig <= overlap``, computed in float32 (official: ``<``, on
      Python ints);
    - it merges only labels passed in ``label_ids_to_fuse`` (official: every stuff class), and appends a
      duplicate ``segments_info`` entry for each merged query (official: one entry per segment);
    - with no kept query it returns a map filled with -1 (official: zeros, i.e. void);
    - with ``target_sizes`` it resizes sigmoid probabilities (official: logits, before the sigmoid).

    Args:
        class_logits: (Q, K+1).
        mask_logits: (Q, H, W) at the output size.
        thing_ids: contiguous ids of the thing classes (the rest are stuff).
        object_mask_threshold: keep queries with class probability strictly above this.
        overlap_threshold: drop a query keeping a smaller fraction of its mask than this.
        mask_probs: optional precomputed ``mask_logits.sigmoid()`` (Q, H, W), float32.
        areas: optional precomputed ``mask_areas(mask_probs)`` (Q,).

    Returns:
        PanopticResult with the (H, W) int32 id map, the segments and the dropped queries.
    """
    scores, labels = class_probs(class_logits).max(-1)  # (Q,), (Q,)
    num_classes = class_logits.shape[-1] - 1
    h, w = mask_logits.shape[-2:]
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    kept = keep.nonzero()[:, 0]  # (Qk,)
    dropped = threshold_drops(scores, labels, keep, num_classes)
    if kept.numel() == 0:
        return PanopticResult(torch.zeros((h, w), dtype=torch.int32), [], dropped)

    if mask_probs is None:  # only the kept queries' probabilities are needed
        probs, rows = mask_logits.index_select(0, kept).float().sigmoid_(), torch.arange(len(kept))
    else:
        probs, rows = mask_probs, kept
    orig_areas = (mask_areas(probs, rows) if areas is None else areas[kept]).tolist()  # (Qk,)
    ids = _weighted_argmax(probs, rows, scores[kept])  # (H, W) index into kept
    assigned = torch.bincount(ids.flatten(), minlength=kept.numel()).tolist()  # (Qk,)

    lut, segments = assemble_segments(
        kept, labels, scores, orig_areas, assigned, thing_ids, overlap_threshold, dropped
    )
    panoptic_seg = torch.tensor(lut, dtype=torch.int32)[ids]  # (H, W)
    return PanopticResult(panoptic_seg, segments, dropped)


def assemble_segments(
    kept: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    orig_areas: list[int],
    assigned: list[int],
    thing_ids: Iterable[int],
    overlap_threshold: float,
    dropped: list[DroppedQuery],
) -> tuple[list[int], list[Segment]]:
    """The official walk over the kept queries once every pixel has its kept query.

    Args:
        kept: (Qk,) kept query indices, ascending; labels, scores: (Q,) best class and probability.
        orig_areas: pixels of each kept query's mask (probability >= 0.5).
        assigned: pixels each kept query won in the weighted argmax.
        dropped: the threshold drops; "empty" and "overlap" drops are added, then all sorted.

    Returns:
        The segment id of each kept index (0: its pixels stay void) and the segments.
    """
    things = {int(t) for t in thing_ids}
    lut = [0] * kept.numel()  # kept index -> segment id (0 = void)
    segments: list[Segment] = []
    stuff_memory: dict[int, Segment] = {}
    for j, q in enumerate(kept.tolist()):
        label, score = int(labels[q]), float(scores[q])
        area, orig = assigned[j], orig_areas[j]
        if area == 0 or orig == 0:
            dropped.append(DroppedQuery(q, label, score, "empty"))
            continue
        if area / orig < overlap_threshold:
            dropped.append(DroppedQuery(q, label, score, "overlap"))
            continue
        isthing = label in things
        if not isthing and label in stuff_memory:  # merge into the class's first stuff segment
            seg = stuff_memory[label]
            seg["area"] += area
            lut[j] = seg["id"]
            continue
        seg = Segment(
            id=len(segments) + 1,
            category_id=label,
            isthing=isthing,
            score=score,
            query=q,
            area=area,
        )
        segments.append(seg)
        if not isthing:
            stuff_memory[label] = seg
        lut[j] = seg["id"]
    dropped.sort(key=lambda d: d.query)
    return lut, segments


def _weighted_argmax(
    probs: torch.Tensor, kept: torch.Tensor, weights: torch.Tensor, chunk: int = 1 << 14
) -> torch.Tensor:
    """argmax over the kept queries of ``weights[k] * probs[kept[k]]``, per pixel.

    Done in pixel blocks so each block is gathered, scaled and reduced while it is in cache.

    Args:
        probs: (Q, H, W); kept: (Qk,) query indices; weights: (Qk,).

    Returns:
        (H, W) int64 indices into ``kept``.
    """
    q, h, w = probs.shape
    flat = probs.reshape(q, h * w)  # (Q, HW)
    out = torch.empty(h * w, dtype=torch.int64)
    wcol = weights[:, None].to(probs.dtype)  # (Qk, 1)
    for start in range(0, h * w, chunk):
        block = flat[:, start : start + chunk].index_select(0, kept)  # (Qk, n), a copy
        out[start : start + chunk] = first_argmax(block.mul_(wcol))
    return out.reshape(h, w)


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` (first maximum on ties) for contiguous float32 (R, n) scores >= +0.0.

    Same result as ``argmax(0)``, several times faster on CPU: see ``_packed_argmax``.
    """
    _, arg, exact = _packed_argmax(scores)
    inexact = (~exact).nonzero()[:, 0]
    if inexact.numel():
        arg[inexact] = scores[:, inexact].argmax(0)
    return arg


def _packed_argmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row argmax through one integer ``amax``: the low mantissa bits carry the row index.

    Non-negative floats order like their int32 bit patterns, so replacing the lowest b bits
    (2^b >= R) with ``2^b - 1 - row`` and taking the integer maximum finds a maximal row, the first
    one among equal values. Values closer than 2^(b-23) relative can come out in the wrong order;
    ``exact`` is False there (the chosen row does not hold the true maximum).

    Args:
        scores: (R, n) contiguous float32, all >= +0.0 (sums of products of probabilities are;
            a -0.0 or a negative value would sort below every positive one).

    Returns:
        best (n,) float32 maxima, arg (n,) int64 row, exact (n,) bool.
    """
    r = scores.shape[0]
    mask = (1 << max(1, (r - 1).bit_length())) - 1
    low = (mask - torch.arange(r, dtype=torch.int32))[:, None]  # (R, 1)
    key = scores.view(torch.int32) & ~mask
    key = key.bitwise_or_(low).amax(0)  # (n,)
    arg = (mask - (key & mask)).long()
    best = scores.amax(0)
    exact = scores.gather(0, arg[None])[0] == best
    return best, arg, exact


def threshold_drops(
    scores: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, num_classes: int
) -> list[DroppedQuery]:
    out = []
    for q in (~keep).nonzero()[:, 0].tolist():
        label = int(labels[q])
        reason = "no-object" if label == num_classes else "below-threshold"
        out.append(DroppedQuery(q, label, float(scores[q]), reason))
    return out


def instance_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    topk: int = 100,
    thing_ids: Iterable[int] | None = None,
    mask_probs: torch.Tensor | None = None,
) -> InstanceResult:
    """Mask2Former's instance inference (MaskFormer itself has none).

    Take the ``topk`` (query, class) pairs by class probability over the Q x K table (no-object
    excluded), optionally keep only thing classes, binarise masks at logit > 0, and score each as
    class probability x mean mask probability inside its mask. Results are sorted by score
    (the official code leaves them in ``topk(sorted=False)`` order).

    Args:
        class_logits: (Q, K+1).
        mask_logits: (Q, H, W).
        topk: detections per image before the thing filter (official: 100).
        thing_ids: if given, keep only these classes (the official code does so when panoptic is on).
        mask_probs: optional precomputed ``mask_logits.sigmoid()`` (Q, H, W), float32.

    Returns:
        InstanceResult with N <= topk instances.
    """
    probs = class_probs(class_logits)[:, :-1]  # (Q, K)
    num_classes = probs.shape[1]
    top_scores, idx = probs.flatten().topk(min(topk, probs.numel()), sorted=True)  # (N,), (N,)
    labels, queries = idx % num_classes, idx // num_classes
    if thing_ids is not None:
        is_thing = torch.zeros(num_classes, dtype=torch.bool)
        is_thing[[int(t) for t in thing_ids]] = True
        sel = is_thing[labels]
        top_scores, labels, queries = top_scores[sel], labels[sel], queries[sel]
    q, h, w = mask_logits.shape
    logits = mask_logits.reshape(q, h * w)  # (Q, HW)
    probs = None if mask_probs is None else mask_probs.reshape(q, h * w)
    uq, inverse = torch.unique(queries, return_inverse=True)  # score each query's mask once
    fg_area = torch.empty(len(uq))
    prob_sum = torch.empty(len(uq))
    for sl in _row_blocks(len(uq), h * w):
        block = logits.index_select(0, uq[sl]).float()  # (u, HW)
        fg = block > 0
        p = block.sigmoid_() if probs is None else probs.index_select(0, uq[sl])
        fg_area[sl] = fg.sum(1).float()
        prob_sum[sl] = (p * fg).sum(1)
    scores = top_scores * (prob_sum / (fg_area + 1e-6))[inverse]  # (N,)
    order = scores.argsort(descending=True, stable=True)
    queries = queries[order]
    masks = torch.empty((len(queries), h * w), dtype=torch.bool)
    for sl in _row_blocks(len(queries), h * w):
        torch.gt(logits.index_select(0, queries[sl]), 0, out=masks[sl])
    return InstanceResult(
        masks=masks.reshape(-1, h, w),
        labels=labels[order],
        scores=scores[order].float(),
        queries=queries,
    )


def _mask_probs(mask_logits: torch.Tensor, mask_probs: torch.Tensor | None) -> torch.Tensor:
    if mask_probs is not None:
        return mask_probs
    return mask_logits.float().sigmoid()
