"""``Prediction``: what the network said about one image, kept small; full-size results on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from maskformer.config import DatasetMeta, TestConfig
from maskformer.inference import instances as inst
from maskformer.inference import tiled
from maskformer.inference.postprocess import InstanceResult, PanopticResult
from maskformer.inference.upsample import LazyMasks, full_size_masks

_CHUNK = 1 << 22  # values per block when a whole full-size map is written


@dataclass(eq=False)
class Prediction:
    """The class logits and the network's mask logits of one image; results at the original size.

    ``mask_logits`` are what the network gave: (Q, Hp/4, Wp/4) logits of the padded input, with
    ``padded_hw`` and ``image_hw`` saying how the official post-processing brings them to the
    original size (bilinear to the padded input, crop to the resized image, bilinear to the
    original). Without ``padded_hw`` they are full-size (Q, H0, W0) logits (tests, converted
    outputs). Either way every result equals the official functions of ``postprocess`` on the
    full-size logits, computed tile by tile (``tiled``, ``instances``) so memory does not grow with
    Q x H0 x W0: a 48 MP photo costs its id maps, not 100 full-size float maps.

    Results use the model's default thresholds (``test``) or the ones given. Per-query mask areas
    are cached as they are computed, and the pixel assignment of the last few kept query sets, so
    a re-merge at new thresholds computes only what it lacks (a new overlap threshold, or a score
    threshold keeping the same queries, computes no pixel).
    """

    class_logits: Tensor  # (Q, K+1); index K is "no object"
    mask_logits: Tensor  # (Q, Hp/4, Wp/4) with padded_hw, else (Q, H0, W0)
    image: np.ndarray  # (H0, W0, 3) uint8 RGB
    meta: DatasetMeta
    test: TestConfig = field(default_factory=TestConfig)
    padded_hw: tuple[int, int] | None = None  # (Hp, Wp) padded network input
    image_hw: tuple[int, int] | None = None  # (Hi, Wi) resized image inside it; default padded_hw
    # Semantic-only models (panoptic off): the official code combines the sigmoid probabilities at
    # the network's input size and resizes the (K, Hi, Wi) scores, i.e. the sigmoid comes between
    # the two resizes (resizing is linear, so resizing the probabilities is the same).
    semantic_at_input: bool = False

    def __post_init__(self) -> None:
        h0, w0 = self.image.shape[:2]
        if self.padded_hw is None and tuple(self.mask_logits.shape[-2:]) != (h0, w0):
            raise ValueError(
                f"mask_logits are {tuple(self.mask_logits.shape[-2:])} but the image is "
                f"{h0}x{w0}: pass padded_hw (and image_hw) for network-size logits"
            )
        self._areas = torch.full((self.num_queries,), -1, dtype=torch.int64)  # -1: not yet
        self._assignments: dict[tuple[int, ...], tiled.Assignment] = {}  # by kept query set

    @cached_property
    def masks(self) -> LazyMasks:
        """The full-size (Q, H0, W0) mask logits, computed on demand."""
        return self._lazy(probs_between=False)

    @cached_property
    def semantic_masks(self) -> LazyMasks:
        """The full-size probabilities the semantic inference combines (official order)."""
        if not self.semantic_at_input or self.padded_hw is None:
            return self.masks
        return self._lazy(probs_between=True)

    def _lazy(self, probs_between: bool) -> LazyMasks:
        size = tuple(self.image.shape[:2])
        padded = size if self.padded_hw is None else tuple(self.padded_hw)
        image_hw = padded if self.image_hw is None else tuple(self.image_hw)
        if self.padded_hw is None:
            image_hw = size
        logits = self.mask_logits.detach().float().cpu()
        return full_size_masks(logits, padded, image_hw, size, probs_between=probs_between)

    @cached_property
    def class_probs(self) -> Tensor:
        """(Q, K+1) softmax over the classes, no-object included."""
        return self.class_logits.float().softmax(-1)

    @property
    def num_queries(self) -> int:
        return int(self.class_logits.shape[0])

    @property
    def mask_areas(self) -> Tensor:
        """(Q,) int64 mask areas of every query (``areas`` of all of them)."""
        return self.areas(torch.arange(self.num_queries))

    def areas(self, queries: Tensor) -> Tensor:
        """(n,) int64 mask areas (pixels with probability >= 0.5) of ``queries``, cached."""
        queries = torch.as_tensor(queries, dtype=torch.int64)
        missing = queries[self._areas[queries] < 0].unique()
        if missing.numel():
            self._areas[missing] = tiled.query_areas(self.masks, missing)
        return self._areas[queries]

    def panoptic(
        self, object_mask_threshold: float | None = None, overlap_threshold: float | None = None
    ) -> PanopticResult:
        """The official panoptic inference; thresholds default to the model config's."""
        return tiled.panoptic(
            self.class_logits,
            self.masks,
            thing_ids=self.meta.thing_ids,
            object_mask_threshold=_default(object_mask_threshold, self.test.object_mask_threshold),
            overlap_threshold=_default(overlap_threshold, self.test.overlap_threshold),
            areas=self.areas,
            assignments=self._assignments,
        )

    @cached_property
    def _semantic(self) -> Tensor:
        return tiled.semantic_map(self.class_logits, self.semantic_masks)

    def semantic(self) -> Tensor:
        """(H0, W0) contiguous class ids (argmax of the official semantic inference), uint8 for
        up to 256 classes (``tiled.index_dtype``). Index torch tensors with ``.long()`` of it:
        torch reads a uint8 index as a mask."""
        return self._semantic

    def instances(self, topk: int | None = None, things_only: bool | None = None) -> InstanceResult:
        """Mask2Former-style top-k instances; by default thing classes only when panoptic is on.

        ``masks`` is an ``instances.InstanceMasks``: each (H0, W0) bool mask made when read.
        """
        things_only = self.test.panoptic_on if things_only is None else things_only
        return inst.instances(
            self.class_logits,
            self.masks,
            topk=_default(topk, self.test.detections_per_image),
            thing_ids=self.meta.thing_ids if things_only else None,
        )

    # Per-query and per-pixel views (what the app shows).

    def query_probs(self, q: int) -> Tensor:
        """(H0, W0) float32 mask probability of query ``q`` at the original size."""
        return self._query_map(int(q), lambda probs: probs, torch.float32)

    def query_mask(self, q: int) -> Tensor:
        """(H0, W0) bool: pixels where query ``q``'s mask probability is >= 0.5."""
        return self._query_map(int(q), lambda probs: probs >= 0.5, torch.bool)

    def _query_map(self, q: int, fn: Any, dtype: torch.dtype) -> Tensor:
        self._check_query(q)
        h, w = self.masks.size
        out = torch.empty((h, w), dtype=dtype)
        step = max(1, _CHUNK // w)
        for y in range(0, h, step):
            y1 = min(y + step, h)
            out[y:y1] = fn(self.masks.probs(torch.tensor([q]), (y, y1), slice(None))[0])
        return out

    def query_area(self, q: int) -> int:
        """Pixels of query ``q`` with mask probability >= 0.5 (the merge's "original area")."""
        self._check_query(int(q))
        return int(self.areas(torch.tensor([int(q)]))[0])

    def pixel_probs(self, x: int, y: int) -> Tensor:
        """(Q,) float32 mask probability of every query at pixel (x, y) of the original image."""
        h, w = self.masks.size
        if not (0 <= int(x) < w and 0 <= int(y) < h):
            raise IndexError(f"pixel ({x}, {y}) lies outside the {w}x{h} image")
        qs = torch.arange(self.num_queries)
        logits = self.masks.points(qs, torch.tensor([int(y)]), torch.tensor([int(x)]))[:, 0]
        return logits.sigmoid()

    def thumbnail_probs(self, h: int, w: int) -> Tensor:
        """(Q, h, w) float32 mask probabilities resized (antialiased bilinear) to a small size.

        Made from the network's logits of the image region (not from full-size maps).
        """
        logits = self.mask_logits.detach().float().cpu()  # (Q, hl, wl)
        if self.padded_hw is not None:  # keep the image, drop the padding
            image_hw = self.image_hw or self.padded_hw
            hl, wl = logits.shape[-2:]
            rows = max(1, min(hl, round(hl * image_hw[0] / self.padded_hw[0])))
            cols = max(1, min(wl, round(wl * image_hw[1] / self.padded_hw[1])))
            logits = logits[:, :rows, :cols]
        small = F.interpolate(
            logits.sigmoid()[None],
            size=(h, w),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
        return small.clamp_(0, 1)

    def _check_query(self, q: int) -> None:
        if not 0 <= q < self.num_queries:
            raise IndexError(f"query {q} does not exist (the model has {self.num_queries} queries)")


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value
