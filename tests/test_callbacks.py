"""Every callback as a plain function (no gradio, no server) on outputs with known merge results."""

import numpy as np
import pytest
import torch

from app import callbacks as cb
from app import views
from app.editing import EditError, make_annotation
from app.session import Session
from app.store import Workspace
from app_helpers import ScriptedPredictor, png_bytes, tiny_checkpoint
from maskformer.errors import ImageReadError, UserError
from maskformer.inference import Predictor, panoptic_inference
from test_store import bomb_png

THR = (0.8, 0.8)


@pytest.fixture
def ctx(tmp_path):
    return cb.make_context(ScriptedPredictor(), Workspace(tmp_path / "ws"), "scripted.safetensors")


@pytest.fixture
def opened(ctx, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes())
    s = cb.open_upload(ctx, Session(), str(path), *THR)
    return ctx, s


def _seg_by_query(s, q):
    return next(g for g in s.annotation.segments if g["query"] == q)


def _cat(ctx, name):
    return ctx.workspace.category_by_name(name).id


def test_make_context_registers_classes_and_model(ctx):
    assert [c.name for c in ctx.workspace.categories()] == list(ctx.meta.class_names)
    assert ctx.workspace.active_model_version().path == "scripted.safetensors"
    assert (ctx.default_score, ctx.default_overlap) == (0.5, 0.8)  # the tiny preset's
    assert [p.name for p in ctx.examples] == ["shapes_1.png", "shapes_2.png", "shapes_3.png"]


def test_open_upload_predicts_and_stores(opened):
    ctx, s = opened
    rec = ctx.workspace.image(s.image_id)
    assert rec.status == "predicted" and rec.name == "photo.png"
    # the annotation is the engine's merge, classes mapped to workspace categories
    assert [(g["query"], g["category_id"]) for g in s.annotation.segments] == [
        (0, _cat(ctx, "sky")),
        (1, _cat(ctx, "circle")),
        (2, _cat(ctx, "square")),
        (5, _cat(ctx, "grass")),
    ]
    np.testing.assert_array_equal(s.annotation.id_map, s.merged.panoptic_seg.numpy())
    stored, segs, source = ctx.workspace.load_annotation(s.image_id)
    np.testing.assert_array_equal(stored, s.annotation.id_map)
    assert source == "model" and [g["id"] for g in segs] == [1, 2, 3, 4]
    assert rec.counts == {"sky": 1, "circle": 1, "square": 1, "grass": 1}


def test_open_example_and_workspace_image(ctx):
    s = cb.open_example(ctx, Session(), "shapes_3.png", *THR)
    assert s.image.shape == (192, 192, 3)
    first = s.image_id
    s = cb.open_image(ctx, Session(), first, *THR)
    assert s.image_id == first and ctx.predictor.calls == 2
    with pytest.raises(UserError, match="no example"):
        cb.open_example(ctx, s, "nope.png", *THR)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"GIF89a broken", "cannot read|not an image"),
        (png_bytes()[:80], "truncated|corrupt|cannot read"),
        (bomb_png(), "decompression bomb"),
    ],
)
def test_bad_upload_changes_nothing(opened, tmp_path, data, match):
    ctx, s = opened
    before = (ctx.workspace.list_images(), s.image_id, s.annotation)
    bad = tmp_path / "bad.png"
    bad.write_bytes(data)
    with pytest.raises(ImageReadError, match=match):
        cb.open_upload(ctx, s, str(bad), *THR)
    assert (ctx.workspace.list_images(), s.image_id, s.annotation) == before
    with pytest.raises(ImageReadError):
        cb.open_upload(ctx, s, None, *THR)


def test_remerge_uses_cached_outputs_and_matches_engine(opened):
    ctx, s = opened
    calls = ctx.predictor.calls
    cb.remerge(ctx, s, 0.55, 0.0)
    assert ctx.predictor.calls == calls  # no model run
    fresh = panoptic_inference(
        s.prediction.class_logits,
        s.prediction.mask_logits,
        thing_ids=ctx.meta.thing_ids,
        object_mask_threshold=0.55,
        overlap_threshold=0.0,
    )  # from the logits, no cache
    np.testing.assert_array_equal(s.annotation.id_map, fresh.panoptic_seg.numpy())
    assert [g["query"] for g in s.annotation.segments] == [g["query"] for g in fresh.segments]
    assert [g["query"] for g in s.annotation.segments] == [0, 1, 2, 5, 6]  # the star survives
    reasons = {d.query: d.reason for d in s.merged.dropped}
    assert reasons == {3: "empty", 4: "no-object"}  # the triangle passes the score, wins nothing
    assert (s.score_threshold, s.overlap_threshold) == (0.55, 0.0)


def test_remerge_keeps_user_edits_until_reset(opened):
    ctx, s = opened
    cb.delete_segment(s, 2)
    cb.remerge(ctx, s, 0.8, 0.0)
    assert 2 not in s.annotation.ids and 6 in [g["query"] for g in s.merged.segments]
    cb.reset_to_model(ctx, s)
    assert [g["query"] for g in s.annotation.segments] == [0, 1, 2, 5, 6]
    cb.undo(s)
    assert 2 not in s.annotation.ids
    cb.redo(s)
    cb.remerge(ctx, s, *THR)  # after a reset the annotation follows the sliders again
    assert [g["query"] for g in s.annotation.segments] == [0, 1, 2, 5]


def test_gallery_sorted_and_dropped_toggle(opened):
    ctx, s = opened
    items = views.gallery(ctx.meta, s, dropped_only=False)
    assert len(items) == 8 and all(t.shape == (96, 96, 3) for t, _ in items)
    best = s.prediction.class_probs[:, :-1].max(1).values
    assert s.gallery_queries == torch.argsort(best, descending=True, stable=True).tolist()
    assert items[0][1] == "q0 sky 0.97"
    dropped = views.gallery(ctx.meta, s, dropped_only=True)
    assert s.gallery_queries == [6, 3, 4]  # by score: star 0.85, triangle 0.6, q4's best real
    assert dropped[0][1].endswith("- overlap") and dropped[1][1].endswith("- below-threshold")
    assert dropped[2][1].endswith("- no-object")


def test_query_detail(opened):
    ctx, s = opened
    d = views.query_detail(ctx.meta, s, 6)
    probs = s.prediction.class_logits[6].softmax(-1)
    assert list(d.top5) == ["star"] + list(d.top5)[1:] and len(d.top5) == 5
    assert d.top5["star"] == pytest.approx(float(probs[3]))
    area = int((s.prediction.mask_logits[6].sigmoid() >= 0.5).sum())
    assert f"mask area {area} px" in d.text and "dropped (overlap" in d.text
    assert d.heatmap.shape == (64, 64, 3)
    assert "survived as segment 2 (circle)" in views.query_detail(ctx.meta, s, 1).text
    assert "merged into stuff segment 1 (sky)" in views.query_detail(ctx.meta, s, 7).text
    with pytest.raises(EditError, match="does not exist"):
        views.query_detail(ctx.meta, s, 8)


def test_pixel_probe(opened):
    ctx, s = opened
    x, y = 19, 44  # inside the disc: circle q1, star q6 (box), q4 (no-object) and grass q5 claim it
    text, rows = views.probe(ctx.meta, ctx.workspace, s, x, y)
    claim = (s.prediction.mask_logits[:, y, x].sigmoid() >= 0.5).nonzero()[:, 0].tolist()
    assert sorted(r[0] for r in rows) == sorted(claim) == [1, 4, 5, 6]
    assert rows[0][:3] == [1, 1.0, "circle"]  # strongest claim first
    assert "segment 2: circle" in text
    with pytest.raises(EditError, match="outside"):
        views.probe(ctx.meta, ctx.workspace, s, 64, 0)


def test_relabel_existing_and_new_class(opened):
    ctx, s = opened
    cb.relabel_segment(ctx, s, 2, "star")
    assert s.annotation.segment(2)["category_id"] == _cat(ctx, "star")
    cb.relabel_segment(ctx, s, 2, "  balloon ", isthing_if_new=True)
    new = ctx.workspace.category_by_name("balloon")
    assert new is not None and new.isthing and s.annotation.segment(2)["category_id"] == new.id
    with pytest.raises(EditError, match="choose a class"):
        cb.relabel_segment(ctx, s, 2, "")
    with pytest.raises(EditError, match="select a segment"):
        cb.relabel_segment(ctx, s, None, "star")
    assert len(s.undo_stack) == 2


def test_delete_merge_split(opened):
    _ctx, s = opened
    squares = s.annotation.mask(3)
    cb.split_segment(s, 3)
    assert len(s.annotation.segments) == 5
    parts = [g for g in s.annotation.segments if g["query"] == 2]
    assert sorted(g["area"] for g in parts) == [49, 64]
    np.testing.assert_array_equal(np.isin(s.annotation.id_map, [g["id"] for g in parts]), squares)
    with pytest.raises(EditError, match="one connected part"):
        cb.split_segment(s, 2)
    cb.merge_segments(s, 3, parts[1]["id"])
    np.testing.assert_array_equal(s.annotation.mask(3), squares)
    cb.delete_segment(s, 2)
    assert 2 not in s.annotation.ids and (s.annotation.id_map[s.undo_stack[-1].mask(2)] == 0).all()


def test_accept_dropped_query_and_swap(opened):
    ctx, s = opened
    cb.accept_query(ctx, s, 6)
    star = _seg_by_query(s, 6)
    mask = (s.prediction.mask_logits[6] > 0).numpy()
    np.testing.assert_array_equal(s.annotation.mask(star["id"]), mask)
    assert star["category_id"] == _cat(ctx, "star") and s.selected == star["id"]
    cb.swap_second_class(ctx, s, star["id"])
    second = int(s.prediction.class_probs[6, :-1].topk(2).indices[1])
    assert s.annotation.segment(star["id"])["category_id"] == ctx.class_categories[second]
    with pytest.raises(EditError, match="choose a dropped query"):
        cb.accept_query(ctx, s, None)


def test_undo_redo_limits(opened):
    _ctx, s = opened
    with pytest.raises(EditError, match="nothing to undo"):
        cb.undo(s)
    cb.delete_segment(s, 1)
    cb.undo(s)
    assert 1 in s.annotation.ids
    cb.redo(s)
    assert 1 not in s.annotation.ids
    with pytest.raises(EditError, match="nothing to redo"):
        cb.redo(s)


def test_save_and_reopen(opened):
    ctx, s = opened
    cb.relabel_segment(ctx, s, 2, "ring")
    msg = cb.save(ctx, s)
    assert "Saved 4 segments" in msg and not s.dirty
    rec = ctx.workspace.image(s.image_id)
    assert rec.status == "corrected" and rec.counts["ring"] == 1
    again = cb.open_image(ctx, Session(), s.image_id, 0.1, 0.1)  # other thresholds: no effect
    np.testing.assert_array_equal(again.annotation.id_map, s.annotation.id_map)
    assert again.annotation.segments == s.annotation.segments and again.edited


def _layer(h, w, color, region):
    layer = np.zeros((h, w, 4), np.uint8)
    layer[region] = (*color, 255)
    return layer


def test_brush_edit_exact(opened):
    ctx, s = opened
    cb.select_segment(s, 2)
    value = cb.editor_value(ctx, s)
    assert value["background"].shape == (64, 64, 4) and value["layers"] == []
    assert s.editor_window == (0, 0, 64, 64)
    add = _layer(64, 64, cb.ADD_COLOR, np.s_[10:14, 10:20])
    remove = _layer(64, 64, cb.REMOVE_COLOR, np.s_[40:50, 10:30])
    remove[40, 10, 3] = 100  # a faint antialiased rim pixel is not a stroke
    old = s.annotation.mask(2)
    cb.apply_brush(ctx, s, {"background": value["background"], "layers": [add, remove]}, None)
    expected = old.copy()
    expected[10:14, 10:20] = True
    expected[40:50, 10:30] = False
    expected[40, 10] = old[40, 10]
    np.testing.assert_array_equal(s.annotation.mask(2), expected)
    with pytest.raises(EditError, match="nothing painted"):
        cb.apply_brush(ctx, s, {"layers": []}, None)
    with pytest.raises(EditError, match="do not match"):
        cb.apply_brush(ctx, s, {"layers": [np.zeros((10, 10, 4), np.uint8)]}, None)


def test_brush_draws_new_segment(opened):
    ctx, s = opened
    cb.select_segment(s, None)
    cb.editor_value(ctx, s)
    layer = _layer(64, 64, cb.ADD_COLOR, np.s_[2:6, 40:50])
    cb.apply_brush(ctx, s, {"layers": [layer]}, "kite", True)
    sid = s.selected
    assert s.annotation.segment(sid)["category_id"] == _cat(ctx, "kite")
    assert s.annotation.segment(sid)["query"] is None and s.annotation.segment(sid)["area"] == 40
    with pytest.raises(EditError, match="no model query"):
        cb.swap_second_class(ctx, s, sid)


def test_brush_on_big_image_is_cropped_and_mapped_back(ctx):
    s = Session()
    rec = ctx.workspace.add_image(png_bytes(300, 1000, seed=3), "wide.png")
    cb.open_image(ctx, s, rec.id, *THR)
    cb.select_segment(s, 2)  # the disc around (x=300, y=210)
    value = cb.editor_value(ctx, s)
    y0, x0, y1, x1 = s.editor_window
    assert value["background"].shape[:2] == (y1 - y0, x1 - x0) and (x1 - x0) < 1000
    add = _layer(y1 - y0, x1 - x0, cb.ADD_COLOR, np.s_[0:3, 0:5])
    old = s.annotation.mask(2)
    cb.apply_brush(ctx, s, {"layers": [add]}, None)
    expected = old.copy()
    expected[y0 : y0 + 3, x0 : x0 + 5] = True
    np.testing.assert_array_equal(s.annotation.mask(2), expected)


def test_views_render(opened):
    ctx, s = opened
    (img, anns), cmap = views.panoptic_view(ctx.workspace, s)
    assert [label for _, label in anns] == ["1: sky", "2: circle", "3: square", "4: grass"]
    assert set(cmap) == {label for _, label in anns} and img.shape == (64, 64, 3)
    np.testing.assert_array_equal(anns[2][0] > 0, s.annotation.mask(3))
    (_, sem), _ = views.semantic_view(ctx.meta, s)
    assert {label for _, label in sem} <= set(ctx.meta.class_names)
    assert views.instance_view(ctx.meta, s).shape == (64, 64, 3)
    assert views.segment_rows(ctx.workspace, s)[1] == [2, "circle", "thing", 183, 1, 0.95]
    assert views.dropped_choices(ctx.meta, s) == [
        ("q3 triangle 0.60 (below-threshold)", 3),
        ("q6 star 0.85 (overlap)", 6),
    ]
    assert "4 segments" in views.status_line(ctx.workspace, s)
    rows = views.workspace_rows(ctx.workspace)
    assert rows[0][:4] == [s.image_id, "photo.png", "64x64", "predicted"]


def test_real_tiny_model_end_to_end(tmp_path):
    """The same calls on a real (random) checkpoint through the engine's Predictor."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    ctx = cb.make_context(
        Predictor.from_checkpoint(ckpt, device="cpu"), Workspace(tmp_path / "ws"), ckpt
    )
    s = cb.open_example(ctx, Session(), "shapes_3.png", 0.0, 0.0)
    assert s.prediction.num_queries == 20
    assert s.prediction.query_probs(0).shape == (192, 192)
    ref = s.prediction.panoptic(0.0, 0.0)
    np.testing.assert_array_equal(s.annotation.id_map, ref.panoptic_seg.numpy())
    assert len(views.gallery(ctx.meta, s, False)) == 20
    cb.delete_segment(s, s.annotation.ids[0])
    assert "Saved" in cb.save(ctx, s)


def test_session_history_is_bounded(opened):
    from app.session import HISTORY_LIMIT

    ctx, s = opened
    for _ in range(HISTORY_LIMIT + 5):
        cb.relabel_segment(ctx, s, 2, "ring")
    assert len(s.undo_stack) == HISTORY_LIMIT
    s.push(make_annotation(np.zeros((64, 64), np.int32), []))
    assert s.selected is None and s.annotation.segments == ()
