"""The per-user session stays small on a 12 MP photo; the shared model is swapped whole."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from app import editing
from app.context import AppContext, ModelState
from app.editing import EditError
from app.history import History, changed_box
from app.session import Session
from app.store import Workspace


def _big_annotation(h=3000, w=4000, n=60, seed=0):
    """A 12 MP annotation of ``n`` segments, each scattered in 100 x 100 blocks all over the
    image: a hard case for deltas (every edit's box is the whole image)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(1, n + 1, size=(h // 100, w // 100))
    id_map = np.kron(cells, np.ones((100, 100), np.int64))  # (h, w)
    segs = [{"id": i, "category_id": 1 + i % 5, "isthing": True} for i in range(1, n + 1)]
    return editing.make_annotation(id_map, segs)


def test_id_maps_are_compact_and_grow_when_needed():
    ann = _big_annotation()
    assert ann.id_map.dtype == np.uint16 and ann.id_map.nbytes == 24_000_000  # int32: 48 MB
    seg = {"id": 70_000, "category_id": 1, "isthing": True}
    big = editing.make_annotation(np.array([[0, 70_000]]), [seg])
    assert big.id_map.dtype == np.int32 and big.id_map[0, 1] == 70_000
    ann2, sid = editing.add_segment(
        editing.make_annotation(np.array([[65_535, 0]]), [{**seg, "id": 65_535}]),
        np.array([[False, True]]),
        1,
        True,
    )
    assert sid == 65_536 and ann2.id_map.dtype == np.int32 and ann2.id_map[0, 1] == 65_536


def test_history_keeps_compressed_deltas_and_restores_exactly():
    ann = _big_annotation()
    history, states = History(), [ann]
    for i in range(50):  # deletes, merges and relabels all over the image
        cur = states[-1]
        ids = cur.ids
        if i % 3 == 0:
            new = editing.delete(cur, ids[i % len(ids)])
        elif i % 3 == 1:
            new = editing.merge(cur, ids[0], ids[-1])
        else:
            new = editing.relabel(cur, ids[1], 99, False)
        history.record(f"edit {i}", cur, new, True)
        states.append(new)
    # 50 snapshots were 50 x 48 MB (int32); these are whole-image boxes, compressed
    assert history.nbytes < 20_000_000
    cur = states[-1]
    for i in range(50, 0, -1):  # every undo gives back exactly the annotation before
        cur, label, edited = history.undo(cur, True)
        assert label == f"edit {i - 1}" and edited
        np.testing.assert_array_equal(cur.id_map, states[i - 1].id_map)
        assert cur.segments == states[i - 1].segments
    for i in range(1, 51):  # and redo the way forward
        cur, _, _ = history.redo(cur, True)
        np.testing.assert_array_equal(cur.id_map, states[i].id_map)
    with pytest.raises(EditError, match="nothing to redo"):
        history.redo(cur, True)


def test_changed_box():
    a = np.zeros((5, 6), np.uint16)
    b = a.copy()
    assert changed_box(a, b) is None and changed_box(a, a) is None
    b[1, 2] = 3
    b[3, 4] = 1
    assert changed_box(a, b) == (1, 2, 4, 5)


def test_a_session_is_small_on_a_12_mp_photo():
    ann = _big_annotation()
    s = Session(image_id=1, image_hw=(3000, 4000), annotation=ann)
    s.view = np.zeros((1341, 1788, 3), np.uint8)  # the display copy (<= 2.4 MP)
    for i in range(50):
        s.push(editing.delete(s.annotation, s.annotation.ids[i % len(s.annotation.ids)]), "d")
        if not s.annotation.ids:
            break
    assert s.nbytes < 60_000_000  # 24 MB id map + 7 MB display copy + compressed deltas


def test_deep_copy_is_a_fresh_session():
    import copy

    s = Session(score_threshold=0.3, image_id=5, image_hw=(2, 2))
    t = copy.deepcopy(s)
    assert t.image_id is None and t.score_threshold == 0.3 and t.lock is not s.lock


def test_model_swaps_whole(tmp_path):
    """Readers never see the predictor of one version with the classes of another."""
    ws = Workspace(tmp_path / "ws")

    def state(k):
        meta = SimpleNamespace(num_classes=k)
        return ModelState(
            SimpleNamespace(meta=meta), meta, tuple(range(k)), version_id=k, default_score=k / 10
        )

    ctx = AppContext(workspace=ws, model=state(1))
    stop, bad = threading.Event(), []

    def reader():
        while not stop.is_set():
            m = ctx.model
            if not (
                m.predictor.meta is m.meta
                and len(m.class_categories) == m.meta.num_classes == m.version_id
            ):
                bad.append(m)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(2, 400):
        ctx.swap_model(state(k))
    stop.set()
    for t in threads:
        t.join()
    assert not bad and ctx.model_version_id == 399 and ctx.default_score == 39.9
    ctx.model_version_id = 7  # registering the running model: a swap too
    assert ctx.model.version_id == 7 and ctx.model.meta.num_classes == 399


def test_release_drops_the_image():
    s = Session(image_id=1, image_hw=(4, 4), annotation=_big_annotation(200, 200, 3))
    s.view = np.zeros((4, 4, 3), np.uint8)
    s.release()
    assert s.image_id is None and s.annotation is None and s.view is None and s.nbytes == 0
    with pytest.raises(EditError, match="open an image first"):
        s.require_image()
