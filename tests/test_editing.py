"""Segment edits on hand-made id maps: exact pixels, areas, ids, and the input left untouched."""

import numpy as np
import pytest

from app import editing
from app.editing import EditError


def _ann():
    """8x8: segment 1 = left half, segment 2 = two blobs on the right, segment 5 = one pixel."""
    m = np.zeros((8, 8), np.int32)
    m[:, :4] = 1
    m[0:2, 5:8] = 2
    m[5:8, 5:8] = 2
    m[3, 6] = 5
    segs = [
        {"id": 1, "category_id": 10, "isthing": False, "query": 0, "score": 0.9},
        {"id": 2, "category_id": 11, "isthing": True, "query": 3, "score": 0.8},
        {"id": 5, "category_id": 11, "isthing": True, "query": None, "score": None},
    ]
    return editing.make_annotation(m, segs)


def _areas(ann):
    return {s["id"]: s["area"] for s in ann.segments}


def test_make_annotation_areas_and_stray_ids():
    m = np.array([[1, 1, 7], [0, 2, 2]])
    ann = editing.make_annotation(
        m, [{"id": 1, "category_id": 3}, {"id": 2, "category_id": 3}, {"id": 9, "category_id": 3}]
    )
    assert ann.id_map.dtype == np.uint16  # compact while every id fits
    assert ann.id_map[0, 2] == 0  # id 7 has no segment entry -> void
    assert _areas(ann) == {1: 2, 2: 2}  # id 9 has no pixels -> dropped


def test_relabel_keeps_pixels_and_input():
    ann = _ann()
    before = ann.id_map.copy()
    new = editing.relabel(ann, 2, 42, False)
    assert new.segment(2)["category_id"] == 42 and new.segment(2)["isthing"] is False
    assert ann.segment(2)["category_id"] == 11  # the original is unchanged (undo relies on it)
    np.testing.assert_array_equal(new.id_map, before)


def test_delete_makes_void():
    ann = _ann()
    new = editing.delete(ann, 2)
    assert 2 not in new.ids and not (new.id_map == 2).any()
    assert (new.id_map[ann.id_map == 2] == 0).all()
    assert (ann.id_map == 2).sum() == 15  # input untouched


def test_merge_moves_pixels():
    ann = _ann()
    new = editing.merge(ann, 1, 5)
    assert new.ids == [1, 2]
    assert new.id_map[3, 6] == 1 and _areas(new)[1] == 33
    with pytest.raises(EditError, match="itself"):
        editing.merge(ann, 1, 1)


def test_split_connected_parts():
    ann = _ann()
    new = editing.split(ann, 2)
    assert sorted(new.ids) == [1, 2, 5, 6]
    # the largest part (rows 5-7) keeps id 2; the smaller one (rows 0-1) gets a new id
    assert _areas(new)[2] == 9 and _areas(new)[6] == 6
    assert (new.id_map[5:8, 5:8] == 2).all() and (new.id_map[0:2, 5:8] == 6).all()
    assert new.segment(6)["category_id"] == 11 and new.segment(6)["query"] == 3
    np.testing.assert_array_equal(new.id_map != 0, ann.id_map != 0)
    assert editing.split(ann, 1) is ann  # one part: nothing to do


def test_split_connectivity():
    m = np.zeros((4, 4), np.int32)
    m[0, 0] = m[1, 1] = 1  # diagonal neighbours
    ann = editing.make_annotation(m, [{"id": 1, "category_id": 0}])
    assert len(editing.split(ann, 1, connectivity=1).segments) == 2
    assert editing.split(ann, 1, connectivity=2) is ann


def test_add_segment_overwrites():
    ann = _ann()
    mask = np.zeros((8, 8), bool)
    mask[0:3, 2:7] = True
    new, sid = editing.add_segment(ann, mask, 99, True, query=7, score=0.5)
    assert sid == 6
    np.testing.assert_array_equal(new.id_map == 6, mask)
    assert new.segment(6)["query"] == 7
    assert _areas(new)[1] == 32 - 6 and _areas(new)[2] == 15 - 4
    with pytest.raises(EditError, match="no pixels"):
        editing.add_segment(ann, np.zeros((8, 8), bool), 1, True)
    with pytest.raises(EditError, match="shape"):
        editing.add_segment(ann, np.ones((4, 4), bool), 1, True)


def test_edit_mask_add_remove_exact():
    ann = _ann()
    add = np.zeros((8, 8), bool)
    add[3:5, 3:6] = True  # takes 2 px from segment 1
    remove = np.zeros((8, 8), bool)
    remove[0, 5:8] = True
    new = editing.edit_mask(ann, 2, add, remove)
    expected = ((ann.id_map == 2) | add) & ~remove
    np.testing.assert_array_equal(new.id_map == 2, expected)
    assert (new.id_map[0, 5:8] == 0).all()  # removed -> void
    assert _areas(new)[1] == 30
    # removing everything deletes the segment
    gone = editing.edit_mask(ann, 5, np.zeros((8, 8), bool), np.ones((8, 8), bool))
    assert 5 not in gone.ids


def test_unknown_segment():
    with pytest.raises(EditError, match="no segment 4"):
        editing.delete(_ann(), 4)


def test_class_counts():
    assert editing.class_counts(_ann()) == {10: 1, 11: 2}
