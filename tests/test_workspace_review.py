"""Review verdicts with their time, stored uncertainty, the queues and next / previous, and the
migration of a workspace made by the first schema."""

import sqlite3
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from app import queue as Q
from app.store import Workspace, WorkspaceError
from app_helpers import png_bytes

# The images table as the first schema wrote it (no review, reviewed, uncertainty columns).
OLD_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    file TEXT NOT NULL,
    name TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'unseen' CHECK (status IN ('unseen', 'predicted', 'corrected')),
    added TEXT NOT NULL
);
"""


@pytest.fixture
def ws(tmp_path):
    w = Workspace(tmp_path / "ws")
    w.add_category("thing")
    return w


def _add(ws, n):
    return [ws.add_image(png_bytes(8, 8, seed=i), f"{i}.png").id for i in range(n)]


def test_review_with_time(ws):
    (a,) = _add(ws, 1)
    assert ws.image(a).review is None and ws.image(a).reviewed is None
    before = datetime.now(UTC) - timedelta(seconds=2)
    rec = ws.set_review(a, "needs-changes")
    when = datetime.fromisoformat(rec.reviewed)
    assert rec.review == "needs-changes" and before <= when <= datetime.now(UTC)
    assert ws.set_review(a, "accepted").review == "accepted"
    cleared = ws.set_review(a, None)
    assert (cleared.review, cleared.reviewed) == (None, None)
    with pytest.raises(WorkspaceError, match="unknown review"):
        ws.set_review(a, "great")
    with pytest.raises(WorkspaceError, match="no image with id 99"):
        ws.set_review(99, "accepted")
    # a saved correction keeps the verdict (the status and the review are separate)
    ws.set_review(a, "accepted")
    ws.save_annotation(a, np.zeros((8, 8), np.int32), [])
    assert (ws.image(a).status, ws.image(a).review) == ("corrected", "accepted")


def test_uncertainty_is_stored(ws):
    (a,) = _add(ws, 1)
    ws.set_uncertainty(a, 0.25)
    assert ws.image(a).uncertainty == 0.25
    ws.set_uncertainty(a, None)
    assert ws.image(a).uncertainty is None
    with pytest.raises(WorkspaceError, match="finite"):
        ws.set_uncertainty(a, float("nan"))
    with pytest.raises(WorkspaceError, match="no image"):
        ws.set_uncertainty(42, 0.1)


def test_save_prediction_is_one_step_and_spares_corrections(ws):
    a, b = _add(ws, 2)
    cat = ws.categories()[0].id
    id_map = np.ones((8, 8), np.int32)
    segs = [{"id": 1, "category_id": cat, "isthing": True, "query": 3, "score": 0.9}]
    assert ws.save_prediction(a, id_map, segs, uncertainty=0.4)
    rec = ws.image(a)
    assert (rec.status, rec.uncertainty, ws.load_annotation(a)[2]) == ("predicted", 0.4, "model")
    ws.save_annotation(b, np.zeros((8, 8), np.int32), [])
    assert not ws.save_prediction(b, id_map, segs, uncertainty=0.9)
    assert ws.image(b).uncertainty is None and ws.load_annotation(b)[0].max() == 0
    bad = [{"id": 1, "category_id": 999}]
    with pytest.raises(WorkspaceError, match="unknown category"):
        ws.save_prediction(a, id_map, bad, uncertainty=0.1)
    assert ws.image(a).uncertainty == 0.4  # the failed write changed nothing


def test_old_workspace_is_migrated(tmp_path):
    root = tmp_path / "old"
    (root / "images").mkdir(parents=True)
    con = sqlite3.connect(root / "workspace.sqlite")
    con.executescript(OLD_SCHEMA)
    con.execute(
        "INSERT INTO images (sha256, file, name, width, height, status, added) "
        "VALUES ('abc', 'images/abc.png', 'old.png', 4, 3, 'predicted', '2025-01-01T00:00:00')"
    )
    con.commit()
    con.close()
    ws = Workspace(root)
    cols = {
        r[1]
        for r in sqlite3.connect(root / "workspace.sqlite").execute("PRAGMA table_info(images)")
    }
    assert {"review", "reviewed", "uncertainty"} <= cols
    (rec,) = ws.list_images()
    assert (rec.name, rec.status, rec.review, rec.uncertainty) == (
        "old.png",
        "predicted",
        None,
        None,
    )
    ws.set_review(rec.id, "accepted")
    ws.set_uncertainty(rec.id, 0.5)
    again = Workspace(root)  # opening a migrated workspace again changes nothing
    assert again.image(rec.id).review == "accepted" and again.image(rec.id).uncertainty == 0.5


# ------------------------------------------------------------------------------------ queues


@pytest.fixture
def six(ws):
    """Six images: 1 unseen, 2 predicted u=0.2, 3 predicted u=0.9 (needs changes),
    4 corrected (accepted), 5 predicted u=0.5, 6 unseen."""
    ids = _add(ws, 6)
    zero = np.zeros((8, 8), np.int32)
    for i, u in [(ids[1], 0.2), (ids[2], 0.9), (ids[4], 0.5)]:
        ws.save_prediction(i, zero, [], uncertainty=u)
    ws.save_annotation(ids[3], zero, [])
    ws.set_review(ids[2], "needs-changes")
    ws.set_review(ids[3], "accepted")
    return ws, ids


def test_image_order(six):
    ws, (a, b, c, d, e, f) = six
    assert Q.image_order(ws) == [a, b, c, d, e, f]
    assert Q.image_order(ws, "unseen") == [a, f]
    assert Q.image_order(ws, "predicted") == [b, c, e]
    assert Q.image_order(ws, "corrected") == [d]
    assert Q.image_order(ws, "needs-changes") == [c]
    assert Q.image_order(ws, "accepted") == [d]
    assert Q.image_order(ws, "uncertain") == [c, e, b, a, d, f]  # scored first, most unsure first
    assert set(Q.QUEUES) >= {"all", "unseen", "predicted", "corrected", "needs-changes"}
    with pytest.raises(WorkspaceError, match="unknown queue"):
        Q.image_order(ws, "best")


def test_neighbour(six):
    ws, (a, b, c, d, e, f) = six
    assert Q.neighbour(ws, None, +1) == a
    assert Q.neighbour(ws, None, -1, "uncertain") == c  # no image open: the first of the queue
    assert Q.neighbour(ws, a, +1) == b and Q.neighbour(ws, b, -1) == a
    assert Q.neighbour(ws, f, +1) is None and Q.neighbour(ws, a, -1) is None
    assert Q.neighbour(ws, c, +1, "uncertain") == e
    assert Q.neighbour(ws, e, +1, "uncertain") == b
    assert Q.neighbour(ws, c, +2, "uncertain") == b
    assert Q.neighbour(ws, b, +1, "predicted") == c
    # from an image outside the queue: its place in the queue's order
    assert Q.neighbour(ws, d, +1, "predicted") == e and Q.neighbour(ws, d, -1, "predicted") == c
    assert Q.neighbour(ws, a, +1, "unseen") == f and Q.neighbour(ws, f, +1, "unseen") is None
    assert Q.neighbour(ws, 999, +1, "unseen") == a  # unknown id: the start of the queue
    assert Q.neighbour(ws, None, +1, "needs-changes") == c
    with pytest.raises(ValueError):
        Q.neighbour(ws, a, 0)


def test_neighbour_keeps_its_place_after_a_save(six):
    """Walking the predicted queue: the open image is saved (now corrected), next goes on."""
    ws, (_a, b, c, _d, e, _f) = six
    ws.save_annotation(c, np.zeros((8, 8), np.int32), [])
    assert Q.image_order(ws, "predicted") == [b, e]
    assert Q.neighbour(ws, c, +1, "predicted") == e
    assert Q.neighbour(ws, c, +1, "uncertain") == e  # the score stays: the order does too


def test_empty_workspace(tmp_path):
    ws = Workspace(tmp_path / "empty")
    assert Q.image_order(ws, "uncertain") == [] and Q.neighbour(ws, None, 1) is None
