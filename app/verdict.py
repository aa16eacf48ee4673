"""The fine-tune verdict: is the new model better than the one it came from, on the held-out images?

Computed, not left to the reader. A score difference counts only beyond *noise*, defined from the
held-out set itself: the n held-out images are resampled with replacement (a paired bootstrap:
both models are scored on the same resampled images), and the noise of a difference is z times
its standard deviation over the resamples (times sqrt(n / (n - 1)), the small-sample correction),
at least ``NOISE_FLOOR`` PQ. z is 1.645 for the overall PQ (a one-sided 95 % bound) and 2.5 for
each class (about 95 % for the family of up to 8 classes tested at once, Bonferroni), so that
one class among many moving by chance is not called a change. Few held-out images, or few
segments of a class, give a wide band; too few give no verdict at all.

- ``regression``: the overall PQ, or the PQ of a class the old model knew, fell by more than its
  noise. Not activated; switching to it asks for confirmation.
- ``improved``: no regression, and the overall PQ or the PQ of a new class rose by more than its
  noise. Activated. (An old class rising alone is shown but does not activate a model.)
- ``no gain``: neither. Not activated (nothing shows it is better).
- ``unchecked``: fewer than ``MIN_HELDOUT_IMAGES`` held-out images. No score is claimed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MIN_HELDOUT_IMAGES = 3  # fewer: "too little data", no verdict
MIN_SEGMENTS = 2  # a class with fewer held-out segments is shown but not judged
NOISE_FLOOR = 2.0  # PQ points: a smaller difference is never called a change
Z_OVERALL = 1.645  # one-sided 95 %
Z_CLASS = 2.5  # one-sided 99.4 %: about 95 % over 8 classes at once
BOOTSTRAP = 1000
SEED = 0  # the resampling is deterministic: the same scores give the same verdict

STATUS_TEXT = {
    "improved": "better than the model it came from",
    "regression": "REGRESSION: worse than the model it came from",
    "no gain": "no measurable change",
    "unchecked": "not checked: too little held-out data",
}


@dataclass(frozen=True)
class ClassChange:
    """One class's held-out PQ before and after, and whether the change is beyond noise."""

    name: str
    new: bool  # the old model did not have this class
    segments: int  # ground-truth segments of the class in the held-out images
    before: float | None
    after: float | None
    delta: float | None
    noise: float | None  # None: too few segments to judge
    change: str  # "better", "worse", "same" or "too few"


@dataclass(frozen=True)
class Verdict:
    status: str  # improved | regression | no gain | unchecked
    activate: bool
    summary: str  # one line for people
    reasons: list[str] = field(default_factory=list)
    heldout_images: int = 0
    overall: ClassChange | None = None
    classes: list[ClassChange] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    before: dict[str, Any],
    after: dict[str, Any],
    new_classes: list[str] | tuple[str, ...] = (),
    *,
    bootstrap: int = BOOTSTRAP,
) -> Verdict:
    """The verdict on a fine-tune from the two held-out score dicts of ``app.heldout.score``
    (same images, same class list)."""
    n = int(after.get("num_images") or 0)
    if n < MIN_HELDOUT_IMAGES:
        return Verdict(
            "unchecked",
            False,
            f"Only {n} held-out image{'s' if n != 1 else ''}: too few to tell whether the new "
            f"model is better (at least {MIN_HELDOUT_IMAGES} are needed, about 15 corrected "
            "images). It was saved but not activated.",
            heldout_images=n,
        )
    names = list(after["classes"])
    b, a = _counts(before, names), _counts(after, names)
    idx = np.random.default_rng(SEED).integers(0, n, size=(bootstrap, n))  # (R, n) resamples
    pq_b, pq_a = _pq(b, idx), _pq(a, idx)  # (R, K) PQ per resample, NaN where undefined
    correction = math.sqrt(n / (n - 1))  # the bootstrap's spread is too small by this for small n
    classes = []
    for c, name in enumerate(names):
        seg = int((b["tp"][:, c] + b["fn"][:, c]).sum())
        pb, pa = (
            _pct(before["per_class"].get(name, {}).get("PQ")),
            _pct(after["per_class"].get(name, {}).get("PQ")),
        )
        if pb is None and pa is None:
            continue  # the class is neither in the held-out truth nor predicted
        judged = seg >= MIN_SEGMENTS
        deltas = (pq_a[:, c] - pq_b[:, c]) * correction
        classes.append(_change(name, name in new_classes, seg, pb, pa, deltas, Z_CLASS, judged))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any class: NaN
        deltas = (np.nanmean(pq_a, 1) - np.nanmean(pq_b, 1)) * correction
    overall = _change(
        "overall",
        False,
        int((b["tp"] + b["fn"]).sum()),
        _pct(before.get("PQ")),
        _pct(after.get("PQ")),
        deltas,
        Z_OVERALL,
        True,
    )
    return _decide(overall, classes, n)


def _decide(overall: ClassChange, classes: list[ClassChange], n: int) -> Verdict:
    worse = [c for c in classes if c.change == "worse" and not c.new]
    reasons = []
    if overall.change == "worse":
        reasons.append(f"held-out PQ fell {_fmt_change(overall)}")
    reasons += [f"{c.name} PQ fell {_fmt_change(c)}" for c in worse]
    if reasons:
        return Verdict(
            "regression",
            False,
            "Regression: " + "; ".join(reasons) + ". Not activated.",
            reasons,
            n,
            overall,
            classes,
        )
    better = [c for c in classes if c.change == "better" and c.new]
    gains = ([f"held-out PQ rose {_fmt_change(overall)}"] if overall.change == "better" else []) + [
        f"{c.name} (new class) PQ rose {_fmt_change(c)}" for c in better
    ]
    if gains:
        return Verdict(
            "improved", True, "Better: " + "; ".join(gains) + ".", gains, n, overall, classes
        )
    return Verdict(
        "no gain",
        False,
        f"No change beyond noise on {n} held-out images (PQ {_fmt_change(overall)}). "
        "Kept the current model.",
        [],
        n,
        overall,
        classes,
    )


def _counts(scores: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """(n, K) arrays of per-image tp, fp, fn and matched IoU sums, columns in ``names`` order."""
    order = [list(scores["classes"]).index(c) if c in scores["classes"] else -1 for c in names]
    out = {}
    for key in ("tp", "fp", "fn", "iou"):
        rows = np.array([img[key] for img in scores["images"]], dtype=np.float64)  # (n, K')
        rows = np.concatenate([rows, np.zeros((len(rows), 1))], 1)  # column -1: a missing class
        out[key] = rows[:, order]  # (n, K)
    return out


def _pq(counts: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """(R, K) PQ x100 of each resample (rows of ``idx`` pick images); NaN where undefined."""
    tp, fp, fn, iou = (counts[k][idx].sum(1) for k in ("tp", "fp", "fn", "iou"))  # (R, K)
    denom = tp + 0.5 * fp + 0.5 * fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 100 * iou / denom, np.nan)


def _change(
    name: str,
    new: bool,
    segments: int,
    before: float | None,
    after: float | None,
    deltas: np.ndarray,
    z: float,
    judged: bool,
) -> ClassChange:
    delta = None if before is None or after is None else after - before
    if before is None:
        before = 0.0 if after is not None else None  # predicted, never in the truth: all FP
        delta = None if after is None else after - before
    if not judged or delta is None:
        return ClassChange(name, new, segments, before, after, delta, None, "too few")
    finite = deltas[np.isfinite(deltas)]
    spread = float(finite.std()) if finite.size > 1 else 0.0
    noise = max(NOISE_FLOOR, z * spread)
    change = "worse" if delta < -noise else "better" if delta > noise else "same"
    return ClassChange(name, new, segments, before, after, delta, noise, change)


def _pct(x: Any) -> float | None:
    return None if x is None else float(x)


def _fmt_change(c: ClassChange) -> str:
    if c.delta is None:
        return "(undefined)"
    noise = "" if c.noise is None else f", noise ±{c.noise:.1f}"
    return f"{c.before:.1f} → {c.after:.1f} ({c.delta:+.1f}{noise})"
