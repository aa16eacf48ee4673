"""Instance results at full size from ``LazyMasks``: exact scores, and masks made one at a time.

``InstanceResult.masks`` from a ``Prediction`` is an ``InstanceMasks``: (N, H, W) bool on demand,
so 100 instances of a 48 MP photo (4.8 GB as one tensor) cost one mask at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maskformer.inference.postprocess import InstanceResult, class_probs
from maskformer.inference.upsample import LazyMasks


def mask_stats(masks: LazyMasks, queries: Tensor) -> tuple[Tensor, Tensor]:
    """Per query: full-size pixels with logit > 0, and the sum of their probabilities.

    Only tiles whose upper bound is > 0 can hold such pixels (a bound keeps its sign exactly).

    Returns:
        (n,) int64 foreground areas and (n,) float64 probability sums.
    """
    grid = masks.grid
    area = torch.zeros(len(queries), dtype=torch.int64)
    prob_sum = torch.zeros(len(queries), dtype=torch.float64)
    maybe = grid.hi.index_select(0, queries) > 0  # (n, TR, TC)
    for j, q in enumerate(queries.tolist()):
        for blk in grid.blocks(maybe[j], pixels=masks.size[0] * masks.size[1]):  # few, chunked
            for r0, r1 in blk.chunks(1):
                logits = masks.values(torch.tensor([q]), (r0, r1), blk.cols)
                fg = logits > 0
                area[j] += int(fg.sum())
                prob_sum[j] += logits[fg].sigmoid_().double().sum()
    return area, prob_sum


class InstanceMasks:
    """(N, H, W) bool instance masks (logit > 0 at full size), each computed when it is read.

    Indexing with an int gives an (H, W) bool tensor; with a slice, list or tensor, another
    ``InstanceMasks``. ``numpy()`` materialises all of them (small images).
    """

    def __init__(self, masks: LazyMasks, queries: Tensor) -> None:
        self._masks = masks
        self.queries = queries  # (N,) source query of each mask

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), *self._masks.size)

    def __len__(self) -> int:
        return int(self.queries.numel())

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, (int, np.integer)) or (isinstance(i, Tensor) and i.ndim == 0):
            return self.mask(int(i))
        sel = torch.as_tensor(np.arange(len(self))[i] if isinstance(i, slice) else i)
        if sel.dtype == torch.bool:
            sel = sel.nonzero()[:, 0]
        return InstanceMasks(self._masks, self.queries[sel.long()])

    def __iter__(self) -> Iterator[Tensor]:
        return (self.mask(i) for i in range(len(self)))

    def numpy(self) -> np.ndarray:
        h, w = self._masks.size
        out = np.zeros((len(self), h, w), bool)
        for i in range(len(self)):
            out[i] = self.mask(i).numpy()
        return out

    def mask(self, i: int) -> Tensor:
        """(H, W) bool mask ``i``: tiles decided by the bounds are filled, the others computed."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"instance {i} out of range for {len(self)} instances")
        q = int(self.queries[i])
        grid = self._masks.grid
        inside, maybe = grid.lo[q] > 0, grid.hi[q] > 0  # (TR, TC)
        out = grid.expand(inside)  # (H, W)
        for blk in grid.blocks(maybe & ~inside, pixels=out.numel()):  # few blocks: one query
            for r0, r1 in blk.chunks(1):
                logits = self._masks.values(torch.tensor([q]), (r0, r1), blk.cols)[0]
                out[r0:r1].index_copy_(1, blk.cols, logits > 0)
        return out


def instances(
    class_logits: Tensor,
    masks: LazyMasks,
    *,
    topk: int = 100,
    thing_ids: Iterable[int] | None = None,
) -> InstanceResult:
    """``postprocess.instance_inference`` on the full-size logits ``masks`` stands for.

    The same instances, labels, queries and order; the mask means are summed in float64 (the dense
    function sums float32), so scores agree to float32 rounding. Masks are an ``InstanceMasks``.
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
    uq, inverse = torch.unique(queries, return_inverse=True)  # score each query's mask once
    fg_area, prob_sum = mask_stats(masks, uq)
    mean = (prob_sum / (fg_area.double() + 1e-6)).float()  # (U,)
    scores = top_scores * mean[inverse]  # (N,)
    order = scores.argsort(descending=True, stable=True)
    return InstanceResult(
        masks=InstanceMasks(masks, queries[order]),
        labels=labels[order],
        scores=scores[order].float(),
        queries=queries[order],
    )
