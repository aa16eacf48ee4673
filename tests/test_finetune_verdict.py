"""The fine-tune verdict on hand-made held-out tables: too little data, a real gain, a real
regression of an old class, a change within noise, and the per-image counts behind "unchanged"."""

import numpy as np
import pytest

from app.heldout import unchanged
from app.verdict import MIN_HELDOUT_IMAGES, judge

CLASSES = ["circle", "square", "sky", "cross"]  # cross is the new class
NEW = ["cross"]


def scores(images: list[dict[str, list[tuple[int, int, int, float]]]]) -> dict:
    """A score dict as ``app.heldout.score`` writes it, from per-image (tp, fp, fn, iou) per
    class (missing classes: no segment in that image)."""
    rows = []
    for i, img in enumerate(images):
        row = {"name": f"img{i}.png", "image_id": i}
        for j, key in enumerate(("tp", "fp", "fn", "iou")):
            row[key] = [float(img.get(c, (0, 0, 0, 0.0))[j]) for c in CLASSES]
        rows.append(row)
    tp, fp, fn, iou = (np.sum([r[key] for r in rows], 0) for key in ("tp", "fp", "fn", "iou"))
    denom = tp + 0.5 * fp + 0.5 * fn
    valid = denom > 0
    pq = np.where(valid, 100 * iou / np.maximum(denom, 1e-9), 0.0)
    per_class = {
        c: {"PQ": float(pq[i]) if valid[i] else None, "segments": int(tp[i] + fn[i])}
        for i, c in enumerate(CLASSES)
    }
    return {
        "PQ": float(pq[valid].mean()) if valid.any() else None,
        "num_images": len(images),
        "classes": CLASSES,
        "per_class": per_class,
        "images": rows,
    }


def image(**classes):
    return classes


# Each image: one circle and one square found (IoU 0.9), sky (IoU 0.95), one cross missed.
BEFORE_IMG = image(
    circle=(1, 0, 0, 0.9), square=(1, 0, 0, 0.9), sky=(1, 0, 0, 0.95), cross=(0, 0, 1, 0.0)
)
LEARNT_IMG = {**BEFORE_IMG, "cross": (1, 0, 0, 0.85)}


def test_too_few_heldout_images_gives_no_verdict():
    """The issue's case: one held-out image, PQ 100 -> 0. No score is claimed, nothing activated."""
    perfect = image(circle=(1, 0, 0, 1.0))
    lost = image(circle=(0, 1, 1, 0.0))
    v = judge(scores([perfect]), scores([lost]), NEW)
    assert v.status == "unchecked" and not v.activate
    assert "1 held-out image" in v.summary and "too few" in v.summary
    n = MIN_HELDOUT_IMAGES - 1
    assert judge(scores([perfect] * n), scores([lost] * n), NEW).status == "unchecked"


def test_learning_the_new_class_is_improved_and_activated():
    n = 6
    v = judge(scores([BEFORE_IMG] * n), scores([LEARNT_IMG] * n), NEW)
    assert v.status == "improved" and v.activate
    cross = next(c for c in v.classes if c.name == "cross")
    assert cross.new and cross.change == "better" and cross.before == 0.0
    assert cross.after == pytest.approx(85.0) and cross.segments == n
    assert any("cross (new class) PQ rose" in r for r in v.reasons)
    old = [c for c in v.classes if not c.new]
    assert all(c.change == "same" for c in old)


def test_an_old_class_lost_everywhere_is_a_regression():
    """The new class is learnt, but squares are lost in every image: not activated, and the
    reason names the class."""
    forgot = {**LEARNT_IMG, "square": (0, 0, 1, 0.0)}
    n = 6
    v = judge(scores([BEFORE_IMG] * n), scores([forgot] * n), NEW)
    assert v.status == "regression" and not v.activate
    assert any(r.startswith("square PQ fell 90.0 → 0.0") for r in v.reasons)
    assert "Not activated" in v.summary
    square = next(c for c in v.classes if c.name == "square")
    assert square.change == "worse" and square.delta == pytest.approx(-90.0)


def test_one_segment_lost_among_many_is_noise():
    """An old class loses one of its 12 held-out segments: within the noise band of 6 images,
    so no regression; the new class still counts as a gain."""
    img = {**BEFORE_IMG, "circle": (2, 0, 0, 1.8)}
    after = [dict(LEARNT_IMG, circle=(2, 0, 0, 1.8)) for _ in range(6)]
    after[0] = dict(after[0], circle=(1, 0, 1, 0.9))
    v = judge(scores([img] * 6), scores(after), NEW)
    circle = next(c for c in v.classes if c.name == "circle")
    assert circle.delta < -2.0 and circle.change == "same" and circle.noise > -circle.delta
    assert v.status == "improved"


def test_small_steady_changes_are_under_the_noise_floor():
    """Every image a little worse (IoU 0.90 -> 0.89 on circles): 1 PQ, under the 2-PQ floor."""
    after = [dict(LEARNT_IMG, circle=(1, 0, 0, 0.89)) for _ in range(5)]
    v = judge(scores([BEFORE_IMG] * 5), scores(after), NEW)
    circle = next(c for c in v.classes if c.name == "circle")
    assert circle.noise == pytest.approx(2.0) and circle.change == "same"


def test_a_class_with_one_segment_is_shown_but_not_judged():
    before = [BEFORE_IMG] * 4 + [dict(BEFORE_IMG, circle=(0, 0, 0, 0.0))]
    before[0] = dict(before[0], square=(0, 0, 0, 0.0))
    before = [dict(b, square=(0, 0, 0, 0.0)) for b in before]
    before[0] = dict(before[0], square=(1, 0, 0, 0.9))  # one square in the whole held-out set
    after = [dict(b, cross=LEARNT_IMG["cross"]) for b in before]
    after[0] = dict(after[0], square=(0, 0, 1, 0.0))  # ... and it is lost
    v = judge(scores(before), scores(after), NEW)
    square = next(c for c in v.classes if c.name == "square")
    assert square.change == "too few" and square.noise is None and square.segments == 1
    assert v.status != "regression"


def test_no_change_is_not_activated():
    v = judge(scores([BEFORE_IMG] * 5), scores([BEFORE_IMG] * 5), NEW)
    assert v.status == "no gain" and not v.activate and "Kept the current model" in v.summary


def test_verdict_is_deterministic_and_serialisable():
    a = judge(scores([BEFORE_IMG] * 5), scores([LEARNT_IMG] * 5), NEW).to_dict()
    b = judge(scores([BEFORE_IMG] * 5), scores([LEARNT_IMG] * 5), NEW).to_dict()
    assert a == b and a["status"] == "improved" and a["classes"][0]["name"] == "circle"


def test_unchanged_finds_corrections_the_model_already_predicted():
    s = scores(
        [
            image(circle=(1, 0, 0, 0.99), sky=(1, 0, 0, 1.0)),  # what the model predicts
            image(circle=(1, 0, 0, 0.8), sky=(1, 0, 0, 1.0)),  # a boundary was moved
            image(circle=(1, 0, 1, 0.99)),  # a segment was added
            image(),  # nothing at all
        ]
    )
    assert unchanged(s) == ["img0.png"]
