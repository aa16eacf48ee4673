"""Panoptic and semantic results at full size from ``LazyMasks``, computing only undecided tiles.

The results are those of ``postprocess``'s official functions on the materialised full-size
logits. Each function first decides whole tiles from the bounds of ``TileGrid`` (a tile where one
query, or one class, wins for every possible value inside the bounds), then computes the exact
full-size values of the few candidates in the other tiles, one tile row at a time in chunks of
about 4M values, so memory stays bounded whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from maskformer.inference.postprocess import (
    PanopticResult,
    assemble_segments,
    class_probs,
    first_argmax,
    threshold_drops,
)
from maskformer.inference.upsample import Block, LazyMasks, TileGrid

# |logit| below this is too close to 0 for a bound to say which side of sigmoid = 0.5 it is on.
AREA_LOGIT_MARGIN = 1e-4
# Outside +-this, a logit's sign says whether its sigmoid is >= 0.5 (sigmoid(1e-6) = 0.50000025,
# four float32 ulps away from 0.5); inside, the sigmoid itself is taken.
SIGMOID_HALF = 1e-6
# Semantic scores are float32 sums over Q queries: rounding stays far inside this relative margin.
SCORE_MARGIN = 1e-4
# Semantic: a query whose largest possible contribution to a score reaches this fraction of the
# tile's largest is computed exactly; a class some exact query gives this probability is scored
# per pixel (the others are bounded per tile).
STRONG_QUERY = 0.25
STRONG_CLASS = 0.05
# Pixel assignments kept per Prediction (by kept query set): a few, each a byte per computed pixel.
ASSIGNMENT_CACHE = 4
FEW_ROWS = 8  # up to this many candidates, pairwise passes find the first maximum fastest


def index_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype holding 0 .. n - 1 (uint8, int16, int32)."""
    if n <= 256:
        return torch.uint8
    return torch.int16 if n <= 1 << 15 else torch.int32


def query_areas(masks: LazyMasks, queries: Tensor) -> Tensor:
    """(n,) int64 full-size pixels with probability >= 0.5 of each query (``mask_areas``)."""
    grid = masks.grid
    lo, hi = grid.lo.index_select(0, queries), grid.hi.index_select(0, queries)  # (n, TR, TC)
    inside = lo > AREA_LOGIT_MARGIN
    unsure = ~inside & (hi >= -AREA_LOGIT_MARGIN)  # (n, TR, TC)
    areas = (inside * grid.tile_pixels).sum((1, 2))
    for blk in grid.blocks(unsure.any(0), unsure):
        rows = blk.queries  # counted exactly, each in its own unsure tiles
        mine = blk.select(unsure[rows])  # (nr, block tiles)
        for r0, r1 in blk.chunks(len(rows)):
            logits = masks.values(queries[rows], (r0, r1), blk.cols).reshape(len(rows), -1)
            counted = mine[:, blk.local_index(r0, r1)] & (logits >= -SIGMOID_HALF)  # (nr, y * x)
            areas[rows] += counted.sum(1)
            near = (counted & (logits <= SIGMOID_HALF)).nonzero()  # sigmoid decides these
            if near.numel():
                below = logits[near[:, 0], near[:, 1]].sigmoid() < 0.5
                areas[rows] -= torch.bincount(near[below, 0], minlength=len(rows))
    return areas


def first_max(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Column maxima of (R, n) float32 ``scores`` >= 0 and the first row reaching each.

    A few rows: pairwise passes (strictly greater replaces, so the first maximum stays);
    more: ``first_argmax``.
    """
    if len(scores) > FEW_ROWS:
        arg = first_argmax(scores)
        return scores.gather(0, arg[None])[0], arg
    best = scores[0].clone()
    arg = torch.zeros(scores.shape[1], dtype=torch.int64)
    for r in range(1, len(scores)):
        better = scores[r] > best
        arg.masked_fill_(better, r)
        torch.maximum(best, scores[r], out=best)
    return best, arg


@dataclass
class Assignment:
    """The kept query of every pixel: per tile (decided tiles) plus the computed pixels."""

    leader: Tensor  # (TR, TC) kept index of each decided tile
    computed: list[tuple[int, int, Tensor, Tensor]]  # (r0, r1, cols, (y, x) kept indices)
    won: Tensor  # (Qk,) int64 pixels won by each kept query

    def paint(self, grid: TileGrid, lut: Tensor) -> Tensor:
        """(H, W) map of ``lut[kept index]`` (``lut`` (Qk,) of the output dtype)."""
        out = grid.expand(lut.index_select(0, self.leader.reshape(-1)).view(self.leader.shape))
        for r0, r1, cols, win in self.computed:
            values = lut.index_select(0, win.reshape(-1).long()).view(win.shape)
            out[r0:r1].index_copy_(1, cols, values)
        return out


def weighted_argmax(masks: LazyMasks, kept: Tensor, weights: Tensor) -> Assignment:
    """Per pixel, the first kept index maximising ``weights[k] * probs[kept[k]]``.

    A tile where one query's lower bound beats every other's upper bound is that query's. In the
    other tiles the strong candidates (upper bound at least half the best) are computed exactly; a
    pixel where the best of them does not beat every other candidate's upper bound is computed
    over all kept queries. The computed pixels are kept compactly (``index_dtype``), so nothing
    full-size is made until the result is painted.
    """
    grid = masks.grid
    plo, phi = grid.prob_bounds
    nk = len(kept)
    w = weights.float()
    upper = phi.index_select(0, kept) * w[:, None, None]  # (Qk, TR, TC)
    lower = plo.index_select(0, kept) * w[:, None, None]  # rounding is monotone: still bounds
    best_lower, leader = lower.max(0)  # (TR, TC)
    cand = upper >= best_lower  # (Qk, TR, TC) queries that may win somewhere in the tile
    decided = cand.sum(0) == 1  # only the leader can win: the whole tile is its
    strong = cand & (upper >= upper.amax(0) * 0.5)
    won = torch.zeros(nk + 1, dtype=torch.int64)  # the last bin takes pixels counted elsewhere
    won[:nk].scatter_add_(0, leader[decided], grid.tile_pixels[decided])
    computed = []
    for blk in grid.blocks(~decided, strong):
        sset = blk.queries  # ascending: the first-max order is kept
        outside = torch.ones(nk, dtype=torch.bool)
        outside[sset] = False
        up_b, cand_b = blk.select(upper), blk.select(cand)  # (Qk, block tiles)
        rest = (up_b * (cand_b & outside[:, None])).amax(0)  # best bound outside sset per tile
        open_b, leader_b = blk.select(~decided), blk.select(leader)
        wcol = w[sset][:, None, None]
        for r0, r1 in blk.chunks(len(sset)):
            local = blk.local_index(r0, r1)  # (y * x,)
            scores = masks.probs(kept[sset], (r0, r1), blk.cols).mul_(wcol)  # (ns, y, x)
            best, arg = first_max(scores.reshape(len(sset), -1))
            win = sset.index_select(0, arg)
            open_px = open_b.index_select(0, local)
            unsure = (open_px & (best <= rest.index_select(0, local))).nonzero()[:, 0]
            if unsure.numel():
                ys, xs = unsure // len(blk.cols) + r0, blk.cols[unsure % len(blk.cols)]
                probs = masks.points(kept, ys, xs).sigmoid_().mul_(w[:, None])  # (Qk, u)
                win[unsure] = first_argmax(probs)
            won += torch.bincount(torch.where(open_px, win, nk), minlength=nk + 1)
            win = torch.where(open_px, win, leader_b.index_select(0, local))
            computed.append((r0, r1, blk.cols, win.to(index_dtype(nk)).view(r1 - r0, -1)))
    return Assignment(leader, computed, won[:nk])


def panoptic(
    class_logits: Tensor,
    masks: LazyMasks,
    *,
    thing_ids: Iterable[int],
    object_mask_threshold: float,
    overlap_threshold: float,
    areas: Callable[[Tensor], Tensor] | None = None,
    assignments: dict[tuple[int, ...], Assignment] | None = None,
) -> PanopticResult:
    """``postprocess.panoptic_inference`` on the full-size logits ``masks`` stands for.

    Args:
        areas: returns the (cached) mask areas of the given queries; default ``query_areas``.
        assignments: a cache of pixel assignments by kept query set, read and filled (at most
            ASSIGNMENT_CACHE entries, least recently used dropped). The assignment depends only
            on which queries pass the score threshold, not on the overlap threshold.
    """
    scores, labels = class_probs(class_logits).max(-1)  # (Q,), (Q,)
    num_classes = class_logits.shape[-1] - 1
    h, w = masks.size
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    kept = keep.nonzero()[:, 0]  # (Qk,)
    dropped = threshold_drops(scores, labels, keep, num_classes)
    if kept.numel() == 0:
        return PanopticResult(torch.zeros((h, w), dtype=torch.int32), [], dropped)
    orig_areas = (areas or (lambda qs: query_areas(masks, qs)))(kept).tolist()
    key = tuple(kept.tolist())
    assignment = None if assignments is None else assignments.pop(key, None)
    if assignment is None:
        assignment = weighted_argmax(masks, kept, scores[kept])
    if assignments is not None:
        assignments[key] = assignment  # most recently used last
        while len(assignments) > ASSIGNMENT_CACHE:
            del assignments[next(iter(assignments))]
    lut, segments = assemble_segments(
        kept, labels, scores, orig_areas, assignment.won.tolist(), thing_ids, overlap_threshold,
        dropped,
    )  # fmt: skip
    panoptic_seg = assignment.paint(masks.grid, torch.tensor(lut, dtype=torch.int32))
    return PanopticResult(panoptic_seg, segments, dropped)


def semantic_map(class_logits: Tensor, masks: LazyMasks) -> Tensor:
    """``semantic_inference(...).argmax(0)`` on the full-size probabilities ``masks`` stands for.

    A tile is decided when the lower bound of one class's score beats every other class's upper
    bound. In the other tiles the strong queries are computed exactly and the rest enter through
    their tile bounds; a pixel those bounds leave in doubt is scored over all classes and queries,
    as ``postprocess.semantic_map`` does.

    Returns:
        (H, W) class ids in ``index_dtype(K)``.
    """
    probs = class_probs(class_logits)[:, :-1]  # (Q, K)
    q, k = probs.shape
    full_t = probs.T.contiguous()  # (K, Q)
    grid = masks.grid
    plo, phi = grid.prob_bounds  # (Q, TR, TC)
    tr, tc = plo.shape[1:]
    s_lo = (full_t @ plo.reshape(q, -1)).reshape(k, tr, tc) * (1 - SCORE_MARGIN)
    s_hi = (full_t @ phi.reshape(q, -1)).reshape(k, tr, tc) * (1 + SCORE_MARGIN)
    best_lower, leader = s_lo.max(0)  # (TR, TC)
    rival = s_hi.scatter(0, leader[None], float("-inf")).amax(0)
    decided = best_lower > rival
    out = grid.expand(leader.to(index_dtype(k)))  # (H, W)
    strength = probs.amax(1)[:, None, None] * phi  # (Q, TR, TC) largest contribution to a score
    strong = strength >= strength.amax(0) * STRONG_QUERY
    for blk in grid.blocks(~decided, strong):
        _semantic_block(masks, probs, full_t, blk, decided, leader, out)
    return out


def _semantic_block(
    masks: LazyMasks,
    probs: Tensor,
    full_t: Tensor,
    blk: Block,
    decided: Tensor,
    leader: Tensor,
    out: Tensor,
) -> None:
    """Exact labels of the open tiles of one block (see ``semantic_map``).

    Scores split into the strong queries E, computed exactly, and the rest, bounded per tile.
    Only the strong classes C (those E's queries give >= STRONG_CLASS) are scored per pixel; any
    other class is bounded per tile by its E part at E's upper bounds plus its rest bound.
    """
    plo, phi = masks.grid.prob_bounds
    q = len(probs)
    lo_b, hi_b = blk.select(plo), blk.select(phi)  # (Q, nt)
    exact_q = blk.queries  # (E,)
    in_e = torch.zeros(q, dtype=torch.bool)
    in_e[exact_q] = True
    rest_lo = probs[~in_e].T @ lo_b[~in_e] * (1 - SCORE_MARGIN)  # (K, nt)
    rest_hi = probs[~in_e].T @ hi_b[~in_e] * (1 + SCORE_MARGIN)
    pe = probs[exact_q]  # (E, K)
    strong_c = (pe >= STRONG_CLASS).any(0)
    strong_c[pe.argmax(1)] = True
    cand = strong_c.nonzero()[:, 0]  # (C,)
    weak_hi = torch.zeros(lo_b.shape[1])
    if not bool(strong_c.all()):
        weak = pe[:, ~strong_c].T @ hi_b[exact_q] * (1 + SCORE_MARGIN) + rest_hi[~strong_c]
        weak_hi = weak.amax(0)  # (nt,) no weak class scores above this in the tile
    a_weights = pe[:, cand].T.contiguous()  # (C, E)
    rl, ru = rest_lo[cand], rest_hi[cand]  # (C, nt)
    open_b, leader_b = blk.select(~decided), blk.select(leader)
    for r0, r1 in blk.chunks(max(len(exact_q), len(cand))):
        local = blk.local_index(r0, r1)  # (n,)
        n = len(local)
        m = masks.probs(exact_q, (r0, r1), blk.cols)  # (E, y, x)
        a = a_weights @ m.reshape(len(exact_q), n)  # (C, n)
        best, arg = (a + rl[:, local]).max(0)
        upper = a.add_(ru[:, local])
        rival = torch.maximum(upper.scatter_(0, arg[None], float("-inf")).amax(0), weak_hi[local])
        labels = cand[arg]
        open_px = open_b[local]
        unsure = (open_px & (best <= rival + (SCORE_MARGIN * best + 1e-6))).nonzero()[:, 0]
        if unsure.numel():
            ys, xs = unsure // len(blk.cols) + r0, blk.cols[unsure % len(blk.cols)]
            m_all = masks.points(torch.arange(q), ys, xs)  # (Q, u)
            if not masks.values_are_probs:
                m_all = m_all.sigmoid_()
            labels[unsure] = first_argmax(full_t @ m_all)
        labels = torch.where(open_px, labels, leader_b[local])
        out[r0:r1].index_copy_(1, blk.cols, labels.reshape(r1 - r0, -1).to(out.dtype))
