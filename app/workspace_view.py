"""What the Workspace tab shows, without gradio: cached thumbnails with status badges, captions,
pages of a queue, counts, the queue table, and a fingerprint that says when any of it changed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from app.queue import ordered
from app.store import REVIEWS, STATUSES, ImageRecord, Workspace

THUMB_SIDE = 96  # pixels, the longer side
PER_PAGE = 48
STATUS_COLORS = {"unseen": (150, 150, 150), "predicted": (240, 170, 30), "corrected": (40, 170, 80)}
REVIEW_COLORS = {"accepted": (40, 170, 80), "needs-changes": (220, 50, 50)}
TABLE_HEADERS = ["id", "name", "size", "status", "review", "reviewed", "uncertainty", "classes"]


def _atomic_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, "PNG")
    os.replace(tmp, path)


def base_thumbnail(ws: Workspace, rec: ImageRecord) -> Path:
    """``thumbs/<sha256>.png``: the image at ``THUMB_SIDE`` px, made once per image."""
    path = ws.root / "thumbs" / f"{rec.sha256}.png"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        with Image.open(ws.root / rec.file) as im:
            im.draft("RGB", (2 * THUMB_SIDE, 2 * THUMB_SIDE))  # JPEG: decode at a fraction
            im = im.convert("RGB")
            im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
            _atomic_png(im, path)
    return path


def thumbnail(ws: Workspace, rec: ImageRecord) -> Path:
    """The thumbnail with its badges: a bar in the status colour along the top and, once
    reviewed, a dot (green accepted, red needs changes) in the top right corner; one file per
    look, so the browser caches each."""
    path = ws.root / "thumbs" / f"{rec.sha256}.{rec.status}.{rec.review or 'none'}.png"
    if path.exists():
        return path
    with Image.open(base_thumbnail(ws, rec)) as base:
        im = base.convert("RGB")
    draw = ImageDraw.Draw(im)
    w, h = im.size
    bar = max(3, h // 12)
    draw.rectangle([0, 0, w - 1, bar], fill=STATUS_COLORS.get(rec.status, (0, 0, 0)))
    if rec.review in REVIEW_COLORS:
        r = max(5, min(w, h) // 7)
        box = [w - 2 * r - 3, bar + 3, w - 3, bar + 3 + 2 * r]
        draw.ellipse(box, fill=REVIEW_COLORS[rec.review], outline=(255, 255, 255), width=2)
    _atomic_png(im, path)
    return path


LEGEND = (
    "Bar: grey unseen, orange predicted, green corrected. Dot: green accepted, red needs changes. "
    "u: the model's uncertainty (higher: less sure)."
)


def caption(rec: ImageRecord) -> str:
    """Short (the gallery cuts long captions): e.g. "#12 u 0.43 ✗"; the status is the bar."""
    parts = [f"#{rec.id}"]
    if rec.uncertainty is not None:
        parts.append(f"u {rec.uncertainty:.2f}")
    if rec.review:
        parts.append("✓" if rec.review == "accepted" else "✗")
    return " ".join(parts)


@dataclass(frozen=True)
class Page:
    """One page of a queue: gallery items, the image id of each, and where it is."""

    items: list[tuple[str, str]]  # (thumbnail path, caption)
    ids: list[int]
    page: int  # 1-based, clamped to 1..pages
    pages: int
    size: int  # images in the queue


def page_of(ws: Workspace, records: list[ImageRecord], queue: str, page: int) -> Page:
    """Page ``page`` of ``queue`` (``PER_PAGE`` images), thumbnails made where missing."""
    recs = ordered(records, queue)
    pages = max(1, -(-len(recs) // PER_PAGE))
    page = min(max(1, int(page or 1)), pages)
    chunk = recs[(page - 1) * PER_PAGE : page * PER_PAGE]
    items = [(str(thumbnail(ws, r)), caption(r)) for r in chunk]
    return Page(items, [r.id for r in chunk], page, pages, len(recs))


def counts_line(records: list[ImageRecord]) -> str:
    """e.g. "12 images: 3 unseen · 7 predicted · 2 corrected; reviewed: 1 accepted"."""
    by_status = {s: sum(r.status == s for r in records) for s in STATUSES}
    line = f"{len(records)} images: " + " · ".join(f"{n} {s}" for s, n in by_status.items())
    reviews = {v: sum(r.review == v for r in records) for v in REVIEWS}
    if any(reviews.values()):
        line += "; reviewed: " + " · ".join(
            f"{n} {v.replace('-', ' ')}" for v, n in reviews.items() if n
        )
    scored = sum(r.uncertainty is not None for r in records)
    return line + (f"; {scored} with an uncertainty score" if scored else "")


def table_rows(records: list[ImageRecord]) -> list[list[Any]]:
    rows = []
    for r in records:
        classes = ", ".join(f"{n} x{c}" for n, c in sorted(r.counts.items()))
        score = "" if r.uncertainty is None else round(r.uncertainty, 4)
        reviewed = (r.reviewed or "").replace("T", " ").split("+")[0]
        rows.append(
            [
                r.id,
                r.name,
                f"{r.width}x{r.height}",
                r.status,
                r.review or "",
                reviewed,
                score,
                classes,
            ]
        )
    return rows


def details(rec: ImageRecord | None) -> str:
    """One line about the selected image for the review controls."""
    if rec is None:
        return "Click a thumbnail to open the image (and select it for review)."
    review = "not reviewed"
    if rec.review:
        review = f"**{rec.review.replace('-', ' ')}** ({(rec.reviewed or '').replace('T', ' ')})"
    score = "no uncertainty score yet" if rec.uncertainty is None else f"u {rec.uncertainty:.3f}"
    return f"#{rec.id} {rec.name}, {rec.width}x{rec.height}: {rec.status}, {review}, {score}"


def fingerprint(records: list[ImageRecord]) -> str:
    """Changes whenever an image is added or its status, review or score changes."""
    h = hashlib.sha1()
    for r in records:
        h.update(f"{r.id}|{r.status}|{r.review}|{r.reviewed}|{r.uncertainty}\n".encode())
    return h.hexdigest()
