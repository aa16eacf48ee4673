"""The review queue's uncertainty score on hand-built predictions whose order is known."""

import math

import pytest
import torch

from app import uncertainty as U
from maskformer.config import TestConfig as Thresholds
from maskformer.data.synthetic import synthetic_meta
from maskformer.inference import Prediction

K = 8  # synthetic classes; index K is no-object
H = W = 32  # <= SOFT_SIDE: the thumbnails are the masks themselves, no resampling


def _logits(label: int, p: float) -> torch.Tensor:
    """(K+1,) class logits whose softmax gives ``label`` probability ``p``, the rest equal."""
    z = torch.zeros(K + 1)
    z[label] = math.log(p * K / (1 - p))
    return z


def prediction(specs, sharp: float = 12.0) -> Prediction:
    """Queries from (label, class probability, box (y0, y1, x0, x1) or None); mask logits
    +sharp inside the box and -sharp outside; no box: an empty mask."""
    cls, masks = [], []
    for label, p, box in specs:
        cls.append(_logits(label, p))
        m = torch.full((H, W), -sharp)
        if box is not None:
            y0, y1, x0, x1 = box
            m[y0:y1, x0:x1] = sharp
        masks.append(m)
    return Prediction(
        class_logits=torch.stack(cls),  # (Q, K+1)
        mask_logits=torch.stack(masks),  # (Q, H, W)
        image=torch.zeros(H, W, 3, dtype=torch.uint8).numpy(),
        meta=synthetic_meta(),
        test=Thresholds(object_mask_threshold=0.5, overlap_threshold=0.8),
    )


TOP, BOTTOM = (0, 16, 0, 32), (16, 32, 0, 32)
NOTHING = [(K, 0.95, TOP)] * 3  # every query says no-object


def score(pred) -> float:
    return U.image_uncertainty(pred, 0.5, 0.8)


class AccessorsOnly:
    """A Prediction seen only through the accessors the app may use: no full-size tensor."""

    def __init__(self, pred: Prediction):
        self._pred = pred
        self.num_queries = pred.num_queries
        self.class_probs = pred.class_probs

    def panoptic(self, *a):
        return self._pred.panoptic(*a)

    def query_area(self, q):
        return self._pred.query_area(q)

    def thumbnail_probs(self, h, w):
        assert max(h, w) <= U.SOFT_SIDE
        return self._pred.thumbnail_probs(h, w)


def test_sure_prediction_scores_its_class_doubt_only():
    sure = prediction([(5, 0.99, TOP), (6, 0.99, BOTTOM), (K, 0.9, None)])
    # every pixel covered at probability 0.99, hard masks (no soft pixel): 1 - 0.99
    assert score(sure) == pytest.approx(0.01, abs=1e-6)
    assert U.image_uncertainty(AccessorsOnly(sure), 0.5, 0.8) == pytest.approx(score(sure))


def test_order_follows_class_mask_and_coverage_doubt():
    sure = prediction([(5, 0.99, TOP), (6, 0.99, BOTTOM)])
    doubtful_class = prediction([(5, 0.6, TOP), (6, 0.99, BOTTOM)])
    soft_masks = prediction([(5, 0.99, TOP), (6, 0.99, BOTTOM)], sharp=1.0)
    # a circle (0.9) across the sky (0.85) / grass (0.99) border wins only its top half: it keeps
    # less than the overlap threshold of its mask, so the merge drops it and its pixels stay void
    plain = prediction([(5, 0.85, TOP), (6, 0.99, BOTTOM)])
    occluded = prediction([(5, 0.85, TOP), (6, 0.99, BOTTOM), (0, 0.9, (12, 20, 8, 24))])
    nothing = prediction(NOTHING)
    s = {
        n: score(p)
        for n, p in [
            ("sure", sure),
            ("class", doubtful_class),
            ("soft", soft_masks),
            ("plain", plain),
            ("occluded", occluded),
            ("nothing", nothing),
        ]
    }
    assert s["sure"] < min(s["class"], s["soft"], s["plain"], s["occluded"])
    assert s["plain"] < s["occluded"] < s["nothing"]
    assert s["nothing"] == max(s.values())
    # class doubt on half the image: (1 - 0.6) / 2 + (1 - 0.99) / 2
    assert s["class"] == pytest.approx(0.205, abs=1e-6)
    # its 64 void pixels count as probability 0 (the sky keeps 448 of 512: above 0.8)
    assert s["occluded"] == pytest.approx(1 - (0.85 * 448 + 0.99 * 512) / 1024, abs=1e-6)
    # soft masks: sigmoid(+-1) = 0.73 / 0.27 lie inside the soft band everywhere
    assert s["soft"] == pytest.approx(0.01 + U.MASK_WEIGHT * 1.0, abs=1e-6)
    # nothing kept: every pixel void and no mask to trust
    assert s["nothing"] == pytest.approx(1.0 + U.MASK_WEIGHT, abs=1e-6)


def test_every_candidate_is_finite_and_pure():
    pred = prediction([(5, 0.7, TOP), (1, 0.55, (20, 28, 4, 12)), (2, 0.45, (2, 8, 2, 8))])
    before = pred.class_logits.clone()
    o = U.outcome(pred, 0.5, 0.8)
    values = {n: f(o, 0.5, 0.8) for n, f in U.CANDIDATES.items()}
    assert all(math.isfinite(v) and v >= 0 for v in values.values())
    assert U.CHOSEN in U.CANDIDATES
    assert score(pred) == score(pred)  # no state
    assert torch.equal(pred.class_logits, before)
    # the 0.45 query sits on the fence of the 0.5 threshold, the 0.55 one too
    assert values["near_threshold"] == pytest.approx(2 * (1 - 0.05 / U.NEAR), abs=1e-6)


def test_near_threshold_and_dropped_mass_see_what_the_merge_drops():
    kept_only = prediction([(5, 0.99, TOP), (6, 0.99, BOTTOM)])
    with_drop = prediction([(5, 0.99, TOP), (6, 0.99, BOTTOM), (1, 0.45, (0, 8, 0, 8))])
    o1, o2 = U.outcome(kept_only, 0.5, 0.8), U.outcome(with_drop, 0.5, 0.8)
    assert U.dropped_mass(o1, 0.5, 0.8) == 0.0
    assert U.dropped_mass(o2, 0.5, 0.8) > 0.0
    assert U.near_threshold(o2, 0.5, 0.8) > U.near_threshold(o1, 0.5, 0.8)
