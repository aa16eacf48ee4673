"""Moving through the workspace from the Annotate tab: queues, next / previous, autosave, review."""

import threading

import numpy as np
import pytest

from app import autosave, navigation
from app import callbacks as cb
from app.queue import image_order, neighbour
from app.session import Session
from app.store import Workspace
from app_helpers import ScriptedPredictor, png_bytes
from maskformer.errors import UserError

THR = (0.8, 0.8)


@pytest.fixture
def ctx(tmp_path):
    ctx = cb.make_context(ScriptedPredictor(), Workspace(tmp_path / "ws"), "scripted.safetensors")
    for i in range(4):
        ctx.workspace.add_image(png_bytes(64, 64, seed=i), f"img{i}.png")
    return ctx


def test_queues_and_neighbours(ctx):
    ws = ctx.workspace
    ids = image_order(ws, "all")
    assert ids == [1, 2, 3, 4]
    assert neighbour(ws, None, +1) == 1
    assert neighbour(ws, 2, +1) == 3 and neighbour(ws, 2, -1) == 1 and neighbour(ws, 4, +1) is None
    ws.set_uncertainty(2, 0.3)
    ws.set_uncertainty(3, 0.9)
    ws.set_uncertainty(4, 0.6)
    assert image_order(ws, "uncertain") == [3, 4, 2, 1]  # most unsure first, unscored last
    assert neighbour(ws, None, +1, "uncertain") == 3 and neighbour(ws, 3, +1, "uncertain") == 4
    ws.set_review(3, "accepted")
    assert image_order(ws, "accepted") == [3]
    ws.set_status(1, "corrected")
    assert image_order(ws, "unseen") == [2, 3, 4]
    assert neighbour(ws, 1, +1, "unseen") == 2  # goes on from the image that left the queue


def test_next_opens_the_first_image_then_moves_on(ctx):
    s = Session()
    navigation.step(ctx, s, +1, *THR, "all")
    assert s.image_id == 1 and s.position == "1 / 4 in all"
    navigation.step(ctx, s, +1, *THR, "all")
    assert s.image_id == 2
    navigation.step(ctx, s, -1, *THR, "all")
    assert s.image_id == 1
    with pytest.raises(UserError, match="no image before"):
        navigation.step(ctx, s, -1, *THR, "all")
    with pytest.raises(UserError, match="unknown queue"):
        navigation.step(ctx, s, +1, *THR, "nope")


def test_moving_on_stores_the_edits_as_the_users(ctx):
    """The issue's contract: a deletion, then D; the database has it with source 'user'."""
    ws = ctx.workspace
    s = Session()
    navigation.step(ctx, s, +1, *THR, "all")
    first = s.image_id
    cb.delete_segment(s, 2)
    navigation.step(ctx, s, +1, *THR, "all")  # D
    id_map, segments, source = ws.load_annotation(first)
    assert source == "user" and ws.image(first).status == "corrected"
    assert 2 not in [g["id"] for g in segments] and not (id_map == 2).any()
    # ... and back: the edit is there (the stored correction is opened)
    navigation.step(ctx, s, -1, *THR, "all")
    assert s.image_id == first and 2 not in s.annotation.ids and s.edited


def test_slider_moves_are_stored_as_the_models(ctx):
    ws = ctx.workspace
    s = Session()
    navigation.step(ctx, s, +1, *THR, "all")
    cb.remerge(ctx, s, 0.55, 0.0)  # the star survives at these thresholds
    assert s.dirty and not s.edited
    autosave.flush(ctx, s)
    _, segments, source = ws.load_annotation(s.image_id)
    assert source == "model" and ws.image(s.image_id).status == "predicted"
    assert 6 in [g["query"] for g in segments]


def test_undo_to_the_model_and_redo(ctx):
    s = Session()
    navigation.step(ctx, s, +1, *THR, "all")
    cb.delete_segment(s, 2)
    cb.reset_to_model(ctx, s)
    assert not s.edited
    cb.undo(s)
    assert s.edited and 2 not in s.annotation.ids
    cb.redo(s)
    assert not s.edited  # the redone reset follows the sliders again
    cb.remerge(ctx, s, 0.55, 0.0)
    assert 6 in [g["query"] for g in s.annotation.segments]


def test_autosave_timer_writes_shortly_after_an_edit(ctx):
    ws = ctx.workspace
    s = Session()
    navigation.step(ctx, s, +1, *THR, "all")
    cb.delete_segment(s, 3)
    autosave.schedule(ctx, s, delay=0.05)
    cb.relabel_segment(ctx, s, 2, "ring")  # a second edit before the timer fires
    autosave.schedule(ctx, s, delay=0.05)
    first = s.timer
    s.timer.join(10)
    assert not s.dirty and not first.is_alive()
    _, segments, source = ws.load_annotation(s.image_id)
    assert source == "user" and 3 not in [g["id"] for g in segments]
    assert (
        next(g for g in segments if g["id"] == 2)["category_id"] == ws.category_by_name("ring").id
    )
    assert len(s.history) == 2  # the history survives the save: undo still works
    cb.undo(s)
    assert s.dirty


def test_concurrent_saves_never_store_an_older_annotation(ctx):
    ws = ctx.workspace
    s = Session()
    navigation.step(ctx, s, +1, *THR, "all")
    errors = []

    def writer():
        try:
            for _ in range(15):
                autosave.store(ctx, s)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(15):
        with s.lock:
            cb.relabel_segment(ctx, s, 2, "ring" if i % 2 else "star")
    for t in threads:
        t.join()
    autosave.flush(ctx, s)
    assert not errors
    _, segments, _ = ws.load_annotation(s.image_id)
    stored = next(g for g in segments if g["id"] == 2)["category_id"]
    assert stored == s.annotation.segment(2)["category_id"]


def test_save_and_next_marks_corrected_even_unedited(ctx):
    ws = ctx.workspace
    s = Session()
    navigation.step(ctx, s, +1, *THR, "all")
    first = s.image_id
    _, msg = navigation.save_and_next(ctx, s, *THR, "all")
    assert "Saved" in msg and s.image_id == 2
    assert ws.image(first).status == "corrected" and ws.load_annotation(first)[2] == "user"
    navigation.step(ctx, s, +1, *THR, "all")
    navigation.step(ctx, s, +1, *THR, "all")
    _, msg = navigation.save_and_next(ctx, s, *THR, "all")  # the last one: stays open
    assert s.image_id == 4 and "no image after" in msg


def test_next_most_uncertain_and_review(ctx):
    ws = ctx.workspace
    s = Session()
    for i in (1, 2, 3):  # opening runs the model and scores the image
        navigation.open_id(ctx, s, i, *THR, "all")
        assert ws.image(i).uncertainty is not None
    ws.set_uncertainty(2, 5.0)
    ws.set_uncertainty(1, 4.0)
    ws.set_uncertainty(3, 1.0)
    # order: 2 (5.0), 1 (4.0), 3 (1.0), 4 (no score yet); from 3: 4, then back to the top
    navigation.next_uncertain(ctx, s, *THR)
    assert s.image_id == 4 and s.position.endswith("in uncertain")
    assert ws.image(4).uncertainty is not None  # opening scored it
    ws.set_uncertainty(4, 0.5)  # (set by hand to keep the order known)
    navigation.next_uncertain(ctx, s, *THR)
    assert s.image_id == 2  # (opening rescored it with the model's own score)
    navigation.set_review(ctx, s, "needs-changes", "all")
    rec = ws.image(2)
    assert rec.review == "needs-changes" and rec.reviewed and s.review == "needs-changes"
    navigation.set_review(ctx, s, "accepted", "all")
    navigation.next_uncertain(ctx, s, *THR)
    assert s.image_id == 1
    for i in (3, 4):
        ws.set_status(i, "corrected")
    with pytest.raises(UserError, match="nothing left to review"):  # 2 is accepted
        navigation.next_uncertain(ctx, s, *THR)
    with pytest.raises(UserError, match="unknown review"):
        navigation.set_review(ctx, s, "great", "all")
    assert image_order(ws, "accepted") == [2]


def test_opening_another_image_flushes_unsaved_edits(ctx):
    ws = ctx.workspace
    s = Session()
    navigation.open_id(ctx, s, 1, *THR, "all")
    cb.brush(ctx, s, [[3, 3], [12, 9]], 3, "erase", None)
    edited = s.annotation.id_map.copy()
    navigation.open_id(ctx, s, 3, *THR, "all")
    np.testing.assert_array_equal(ws.load_annotation(1)[0], edited)
