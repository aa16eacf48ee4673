"""How unsure the model is about one image: a score from its cached outputs, higher = less sure.

The sum of three parts, each in [0, 1]:
- doubt in what was kept: 1 - the mean class probability of the merge's segments (1 with none);
- probability mass left out: the best real-class probabilities of the queries the merge dropped
  for overlap or an empty mask, over the number of segments plus those queries (what a user may
  have to add back);
- decisions near the line: the share of queries whose best real-class probability lies within
  ``MARGIN`` of the score threshold (a small slider move changes them).
"""

from __future__ import annotations

from typing import Any

MARGIN = 0.1


def image_uncertainty(pred: Any, score_threshold: float, overlap_threshold: float) -> float:
    """The image's uncertainty score (see the module docstring); uses only ``pred``'s accessors."""
    pan = pred.panoptic(score_threshold, overlap_threshold)
    probs = pred.class_probs[:, :-1]  # (Q, K) real classes
    best = probs.max(1).values  # (Q,)
    kept = [float(s["score"]) for s in pan.segments]
    doubt = 1.0 - sum(kept) / len(kept) if kept else 1.0
    left = [float(best[d.query]) for d in pan.dropped if d.reason in ("overlap", "empty")]
    missed = sum(left) / max(1, len(kept) + len(left))
    near = float(((best - score_threshold).abs() < MARGIN).float().mean())
    return doubt + missed + near
