"""Every callback as a plain function (no gradio, no server) on outputs with known merge results."""

import numpy as np
import pytest
import torch

from app import callbacks as cb
from app import inspector, raster, views
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
    np.testing.assert_array_equal(s.annotation.id_map, s.prediction.panoptic(*THR).panoptic_seg)
    stored, segs, source = ctx.workspace.load_annotation(s.image_id)
    np.testing.assert_array_equal(stored, s.annotation.id_map)
    assert source == "model" and [g["id"] for g in segs] == [1, 2, 3, 4]
    assert rec.counts == {"sky": 1, "circle": 1, "square": 1, "grass": 1}


def test_open_example_and_workspace_image(ctx):
    s = cb.open_example(ctx, Session(), "shapes_3.png", *THR)
    assert s.image_hw == (192, 192) and s.view.shape == (192, 192, 3)
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


def test_gallery_sorted_with_fates(opened):
    ctx, s = opened
    cb.inspect_prediction(ctx, s)
    gal = inspector.gallery(s)
    assert s.thumbs.shape == (8, 96, 96, 3)
    best = s.prediction.class_probs[:, :-1].max(1).values
    assert [it["q"] for it in gal["items"]] == torch.argsort(
        best, descending=True, stable=True
    ).tolist()
    assert gal["items"][0] == {"q": 0, "cls": "sky", "score": 0.97, "seg": 1, "reason": None}
    dropped = [(it["q"], it["reason"]) for it in gal["items"] if it["reason"]]
    assert dropped == [(6, "overlap"), (3, "below-threshold"), (4, "no-object")]
    assert next(it for it in gal["items"] if it["q"] == 7)["seg"] == 1  # stuff: merged into sky
    assert gal["sprite"]["data"].startswith("data:image/png")
    assert "data" not in inspector.gallery(s)["sprite"]  # sent once
    # opening stored the image's uncertainty score for the review queue
    assert ctx.workspace.image(s.image_id).uncertainty is not None


def test_query_detail(opened):
    ctx, s = opened
    d = inspector.query_detail(ctx, s, 6)
    probs = s.prediction.class_logits[6].softmax(-1)
    assert d["top5"][0][0] == "star" and len(d["top5"]) == 5
    assert d["top5"][0][1] == pytest.approx(float(probs[3]), abs=1e-4)
    area = int((s.prediction.mask_logits[6].sigmoid() >= 0.5).sum())
    assert d["area"] == area and d["accept"]
    # why it was dropped, with the numbers: the box keeps only its corners outside the disc
    box = (s.prediction.mask_logits[6] > 0).numpy()
    disc = (s.prediction.mask_logits[1] > 0).numpy()
    kept = int((box & ~disc).sum())
    assert f"keeps {kept / area:.0%} of its mask ({kept} of {area} px)" in d["text"]
    assert (
        "overlap threshold asks for 80%" in d["text"] and "segment 2 (circle) covers" in d["text"]
    )
    assert d["heat"]["data"].startswith("data:image/png")
    assert "kept as segment 2 (now circle)" in inspector.query_detail(ctx, s, 1)["text"]
    assert "merged into the stuff segment 1" in inspector.query_detail(ctx, s, 7)["text"]
    assert "not above the score threshold 0.80" in inspector.query_detail(ctx, s, 3)["text"]
    assert "best class is no-object" in inspector.query_detail(ctx, s, 4)["text"]
    with pytest.raises(EditError, match="does not exist"):
        inspector.query_detail(ctx, s, 8)


def test_pixel_probe(opened):
    ctx, s = opened
    x, y = 19, 44  # inside the disc: circle q1, star q6 (box), q4 (no-object) and grass q5 claim it
    p = inspector.probe(ctx, s, x + 0.7, y + 0.2)  # any point inside the pixel
    claim = (s.prediction.mask_logits[:, y, x].sigmoid() >= 0.5).nonzero()[:, 0].tolist()
    assert sorted(r[0] for r in p["rows"]) == sorted(claim) == [1, 4, 5, 6]
    assert p["rows"][0][:3] == [1, 1.0, "circle"]  # strongest claim first
    assert "segment 2: circle" in p["text"] and (p["x"], p["y"]) == (x, y)
    with pytest.raises(EditError, match="outside"):
        inspector.probe(ctx, s, 64, 0)


def test_relabel_existing_and_new_class(opened):
    ctx, s = opened
    cb.relabel_segment(ctx, s, 2, "star")
    assert s.annotation.segment(2)["category_id"] == _cat(ctx, "star")
    cb.relabel_segment(ctx, s, 2, "  balloon ", isthing_if_new=True)
    new = ctx.workspace.category_by_name("balloon")
    assert new is not None and new.isthing and s.annotation.segment(2)["category_id"] == new.id
    with pytest.raises(EditError, match="choose a class"):
        cb.relabel_segment(ctx, s, 2, "")
    cb.relabel_segment(ctx, s, None, "star")  # no id: the selected segment (2)
    assert s.annotation.segment(2)["category_id"] == _cat(ctx, "star")
    cb.select_segment(s, None)
    with pytest.raises(EditError, match="select a segment"):
        cb.relabel_segment(ctx, s, None, "star")
    assert len(s.history) == 3 and s.history.undo_label == "relabel 2 → star"
    cb.relabel_segment(ctx, s, 2, _cat(ctx, "ring"))  # by category id, as the canvas sends it
    assert s.annotation.segment(2)["category_id"] == _cat(ctx, "ring")


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
    before = s.annotation.mask(2)
    cb.delete_segment(s, 2)
    assert 2 not in s.annotation.ids and (s.annotation.id_map[before] == 0).all()
    assert s.history.undo_label == "delete 2"
    cb.undo(s)
    np.testing.assert_array_equal(s.annotation.mask(2), before)
    assert s.message == "Undid: delete 2"


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


def test_brush_and_erase_are_exact(opened):
    ctx, s = opened
    old = s.annotation.mask(2)
    pts, width = [[10.2, 10.7], [20.5, 14.1], [30.0, 12.0]], 5.0
    stroke = raster.paste((64, 64), raster.stroke_mask((64, 64), pts, width))
    cb.brush(ctx, s, pts, width, "add", 2)
    np.testing.assert_array_equal(s.annotation.mask(2), old | stroke)
    assert s.history.undo_label == "brush on 2" and s.selected == 2
    cb.brush(ctx, s, pts, width, "erase", 2)  # the same path erased: what it added is gone
    np.testing.assert_array_equal(s.annotation.mask(2), old & ~stroke)
    assert s.history.undo_label == "eraser erased from 2"
    # erasing with nothing selected clears every segment under the stroke
    cb.brush(ctx, s, [[0, 0], [63, 63]], 3, "erase", None)
    line = raster.paste((64, 64), raster.stroke_mask((64, 64), [[0, 0], [63, 63]], 3))
    assert (s.annotation.id_map[line] == 0).all()
    with pytest.raises(EditError, match="covers no pixel"):
        cb.brush(ctx, s, [[500, 500]], 3, "add", 2)
    with pytest.raises(EditError, match="brush width"):
        cb.brush(ctx, s, pts, 0, "add", 2)
    with pytest.raises(EditError, match="mode"):
        cb.brush(ctx, s, pts, 3, "paint", 2)


def test_brush_and_polygon_draw_new_segments(opened):
    ctx, s = opened
    with pytest.raises(EditError, match="pick a class"):
        cb.brush(ctx, s, [[5, 5]], 4, "add", None, None)
    cb.brush(ctx, s, [[40, 2], [50, 6]], 4, "add", None, "kite")
    sid = s.selected
    seg = s.annotation.segment(sid)
    assert seg["category_id"] == _cat(ctx, "kite") and seg["query"] is None
    assert s.history.undo_label == f"new segment {sid} (kite, brush)"
    with pytest.raises(EditError, match="no model query"):
        cb.swap_second_class(ctx, s, sid)
    square = [[2, 40], [12, 40], [12, 50], [2, 50]]
    cb.polygon(ctx, s, square, "add", None, _cat(ctx, "ring"))
    pid = s.selected
    assert s.annotation.segment(pid)["area"] == 100  # pixel centres inside a 10 x 10 square
    assert (s.annotation.id_map[40:50, 2:12] == pid).all()
    cb.polygon(ctx, s, [[2, 40], [7, 40], [7, 50], [2, 50]], "erase", pid)
    assert s.annotation.segment(pid)["area"] == 50


def test_select_at_full_size_coordinates(opened):
    _ctx, s = opened
    cb.select_at(s, 19.9, 44.5)  # the pixel (19, 44) of the disc
    assert s.selected == 2
    cb.select_at(s, 5, 5)  # the corner is sky
    assert s.selected == 1
    with pytest.raises(EditError, match="outside"):
        cb.select_at(s, 64, 1)


def test_big_image_is_shown_small_and_edited_at_full_size(ctx):
    from app import canvas

    s = Session()
    rec = ctx.workspace.add_image(png_bytes(1500, 2000, seed=3), "wide.png")
    cb.open_image(ctx, s, rec.id, *THR)
    dh, dw = canvas.display_size(1500, 2000)
    assert s.view.shape == (dh, dw, 3) and dh * dw <= canvas.DISPLAY_MAX_PIXELS < 1500 * 2000
    value = views.canvas_value(ctx, s)
    assert value["size"] == [2000, 1500] and value["view"] == [dw, dh]
    # an edit at full resolution: one full-size pixel, not a display pixel
    old = s.annotation.mask(2)
    cb.brush(ctx, s, [[1000.5, 700.5]], 1.0, "erase", 2)
    expected = old.copy()
    expected[700, 1000] = False
    np.testing.assert_array_equal(s.annotation.mask(2), expected)


def test_canvas_value_sends_pictures_once(opened):
    ctx, s = opened
    v = views.canvas_value(ctx, s)
    assert v["image"]["data"].startswith("data:image/jpeg")
    assert v["overlay"]["data"].startswith("data:image/png") and v["overlay"]["mode"] == "L"
    assert v["overlay"]["ids"] == [1, 2, 3, 4]
    assert [r["cls"] for r in v["segments"]] == ["sky", "circle", "square", "grass"]
    assert [c["key"] for c in v["classes"][:3]] == ["1", "2", "3"]
    again = views.canvas_value(ctx, s)
    assert again["image"]["data"] is None and again["overlay"]["data"] is None
    cb.relabel_segment(ctx, s, 2, "ring")  # pixels unchanged: the same overlay
    assert views.canvas_value(ctx, s)["overlay"]["key"] == v["overlay"]["key"]
    cb.delete_segment(s, 3)  # pixels changed: a new overlay
    third = views.canvas_value(ctx, s)
    assert third["overlay"]["key"] != v["overlay"]["key"] and third["overlay"]["data"]
    views.resend(s)
    assert views.canvas_value(ctx, s)["image"]["data"] is not None


def test_overlay_indices_are_exact(opened):
    """The index PNG decodes to exactly the display id map (the browser recolours it)."""
    import base64
    import io

    from PIL import Image

    from app import canvas

    ids = np.array([[0, 5, 5], [300, 7, 0]], np.int32)
    for seg_ids in ([5, 7, 300], list(range(1, 400))):
        url, mode = canvas.index_png(ids, seg_ids)
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        if mode == "L":
            index = img.astype(np.int64)
        else:
            rgb = img.astype(np.int64)
            index = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        lut = np.array([0, *seg_ids])
        np.testing.assert_array_equal(lut[index], ids)
        assert mode == ("L" if len(seg_ids) < 256 else "RGB")


def test_views_render(opened):
    ctx, s = opened
    sem = inspector.semantic_view(s)
    assert {c["name"] for c in sem["classes"]} <= set(ctx.meta.class_names)
    assert inspector.instance_view(s)["data"].startswith("data:image/png")
    assert "4 segments" in views.status_line(s)
    line = views.model_line(ctx)  # the scripted model has the synthetic demo's 8 classes
    assert "knows only 8 synthetic shape classes" in line and "#dc143c" in line  # circle colour
    from app.context import AppContext, ModelState
    from maskformer.config import generic_meta

    other = AppContext(
        workspace=ctx.workspace, model=ModelState(None, generic_meta(3), (), checkpoint="x.pt")
    )
    assert "synthetic" not in views.model_line(other) and "3 classes" in views.model_line(other)


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
    cb.inspect_prediction(ctx, s)
    assert len(inspector.gallery(s)["items"]) == 20
    cb.delete_segment(s, s.annotation.ids[0])
    assert "Saved" in cb.save(ctx, s)


def test_session_history_is_bounded_and_compact(opened):
    from app.history import HISTORY_LIMIT

    ctx, s = opened
    for i in range(HISTORY_LIMIT + 5):
        cb.relabel_segment(ctx, s, 2, "ring" if i % 2 else "star")
    assert len(s.history) == HISTORY_LIMIT
    s.push(make_annotation(np.zeros((64, 64), np.int32), []), "clear")
    assert s.selected is None and s.annotation.segments == ()
    cb.undo(s)
    assert len(s.annotation.segments) == 4


def test_logic_modules_never_import_gradio():
    """Only the tab builders, the page and the warning guard touch gradio: every module they
    call is plain Python that these tests drive with arrays."""
    import ast
    from pathlib import Path

    glue = {"annotate_tab.py", "workspace_tab.py", "train_tab.py", "ui.py", "guard.py"}
    app_dir = Path(cb.__file__).parent
    for f in sorted(app_dir.rglob("*.py")):
        if f.name in glue:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == "gradio" for n in names), f"{f.name} imports gradio"
