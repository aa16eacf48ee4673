"""How unsure the model is about one image: a score from its cached outputs (higher = less sure).

Pure functions of a ``Prediction``, through its accessors only (``class_probs``, ``panoptic``,
``query_area``, ``thumbnail_probs``), at the thresholds the user merges with. The review queue
(``app.queue``, "uncertain") shows the images with the highest score first; how the score is
made, and how well it finds the images the model got wrong, is in ``docs/review_queue.md``
(measured by ``bench/uncertainty.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from maskformer.inference import Prediction

NEAR = 0.1  # a class probability this close to the score threshold counts as "on the fence"
SOFT_SIDE = 64  # masks are judged on (Q, h, w) thumbnails of this longer side: cheap at any size
SOFT_BAND = (0.1, 0.9)  # a mask probability strictly inside this band is "soft" (unsure)
MASK_WEIGHT = 0.25  # weight of mask softness next to unsure pixels in the chosen score


@dataclass(frozen=True)
class Outcome:
    """The per-image facts the scores are made of (all plain numbers).

    Attributes:
        pixels: H x W of the image.
        kept: (score, area, kept fraction, softness) of each panoptic segment: the class
            probability of its query, its pixels, its pixels over its query's own mask area (1 for
            merged stuff segments, whose pixels come from several queries), and the soft share of
            its query's mask: thumbnail pixels with probability inside ``SOFT_BAND`` over those
            >= 0.5, at most 1 (1 when the thumbnail has no such pixel: a mask too small to judge).
        dropped: (best real-class probability, foreground probability, mask area, reason) of each
            query the merge dropped for a reason other than "no-object".
        fence: the best real-class probability of every query (for "near the threshold").
    """

    pixels: int
    kept: tuple[tuple[float, int, float, float], ...]
    dropped: tuple[tuple[float, float, int, str], ...]
    fence: tuple[float, ...]


def outcome(pred: Prediction, score_threshold: float, overlap_threshold: float) -> Outcome:
    """Merge once at the given thresholds and collect what the scores need."""
    pan = pred.panoptic(float(score_threshold), float(overlap_threshold))
    h, w = pan.panoptic_seg.shape[-2:]
    probs = pred.class_probs  # (Q, K+1); column K is no-object
    real = probs[:, :-1].max(-1).values  # (Q,) best real-class probability
    kept = []
    if pan.segments:
        scale = min(1.0, SOFT_SIDE / max(h, w))
        thumbs = pred.thumbnail_probs(
            max(1, round(h * scale)), max(1, round(w * scale))
        )  # (Q, h', w')
        lo, hi = SOFT_BAND
    for seg in pan.segments:
        q = int(seg["query"])
        frac = 1.0 if not seg["isthing"] else min(1.0, seg["area"] / max(pred.query_area(q), 1))
        m = thumbs[q]  # (h', w')
        region, band = int((m >= 0.5).sum()), int(((m > lo) & (m < hi)).sum())
        soft = 1.0 if region == 0 else min(1.0, band / region)
        kept.append((float(seg["score"]), int(seg["area"]), frac, soft))
    dropped = [
        (float(real[d.query]), float(1 - probs[d.query, -1]), pred.query_area(d.query), d.reason)
        for d in pan.dropped
        if d.reason != "no-object"
    ]
    return Outcome(int(h * w), tuple(kept), tuple(dropped), tuple(real.tolist()))


# ------------------------------------------------------------------------------------ scores
# Each maps an Outcome (and the thresholds) to a number, higher = less sure. bench/uncertainty.py
# compares them by rank correlation with per-image PQ; ``image_uncertainty`` uses the best.


def low_confidence(o: Outcome, t_score: float, t_overlap: float) -> float:
    """1 - the mean class probability of the kept segments (1 when nothing is kept)."""
    if not o.kept:
        return 1.0
    return 1.0 - sum(s for s, *_ in o.kept) / len(o.kept)


def min_confidence(o: Outcome, t_score: float, t_overlap: float) -> float:
    """1 - the lowest class probability of a kept segment (1 when nothing is kept)."""
    return 1.0 - min((s for s, *_ in o.kept), default=0.0)


def unsure_pixels(o: Outcome, t_score: float, t_overlap: float) -> float:
    """1 - area-weighted confidence: void pixels count as probability 0."""
    return 1.0 - sum(s * a for s, a, *_ in o.kept) / max(o.pixels, 1)


def void_share(o: Outcome, t_score: float, t_overlap: float) -> float:
    """Share of the image that no segment covers."""
    return 1.0 - sum(a for _, a, *_ in o.kept) / max(o.pixels, 1)


def dropped_mass(o: Outcome, t_score: float, t_overlap: float) -> float:
    """Foreground probability of the dropped queries, weighted by their mask's share of the image."""
    return sum(fg * a for _, fg, a, _ in o.dropped) / max(o.pixels, 1)


def near_threshold(o: Outcome, t_score: float, t_overlap: float) -> float:
    """How many queries sit on the fence: class probability within ``NEAR`` of the score
    threshold, or a kept thing segment keeping little more than the overlap threshold."""
    fence = sum(1.0 - abs(p - t_score) / NEAR for p in o.fence if abs(p - t_score) < NEAR)
    occluded = sum(
        1.0 - (f - t_overlap) / NEAR for _, _, f, _ in o.kept if t_overlap <= f < t_overlap + NEAR
    )
    return fence + occluded


def unsure_plus_dropped(o: Outcome, t_score: float, t_overlap: float) -> float:
    """unsure_pixels + dropped_mass: pixels the merge is unsure of plus mass it threw away."""
    return unsure_pixels(o, t_score, t_overlap) + dropped_mass(o, t_score, t_overlap)


def mask_softness(o: Outcome, t_score: float, t_overlap: float) -> float:
    """The mean soft share of the kept segments' masks (1 when nothing is kept): wide bands of
    in-between probability mean the model is unsure where a segment ends."""
    if not o.kept:
        return 1.0
    return sum(soft for *_, soft in o.kept) / len(o.kept)


def pixels_and_masks(o: Outcome, t_score: float, t_overlap: float) -> float:
    """unsure_pixels + ``MASK_WEIGHT`` x mask_softness: unsure about the class of the pixels,
    or about where the segments end."""
    return unsure_pixels(o, t_score, t_overlap) + MASK_WEIGHT * mask_softness(o, t_score, t_overlap)


CANDIDATES: dict[str, Callable[[Outcome, float, float], float]] = {
    "low_confidence": low_confidence,
    "min_confidence": min_confidence,
    "unsure_pixels": unsure_pixels,
    "void_share": void_share,
    "dropped_mass": dropped_mass,
    "near_threshold": near_threshold,
    "unsure_plus_dropped": unsure_plus_dropped,
    "mask_softness": mask_softness,
    "pixels_and_masks": pixels_and_masks,
}
CHOSEN = "pixels_and_masks"


def image_uncertainty(pred: Prediction, score_threshold: float, overlap_threshold: float) -> float:
    """The review queue's score of one prediction (higher = less sure; finite, >= 0)."""
    o = outcome(pred, score_threshold, overlap_threshold)
    value = CANDIDATES[CHOSEN](o, float(score_threshold), float(overlap_threshold))
    return float(value) if math.isfinite(value) else 1.0
