"""COCO helpers: id <-> RGB, RLE and polygons against pycocotools, JSON errors, writers."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from maskformer.data import coco
from maskformer.data.base import Sample
from maskformer.data.synthetic import synthetic_meta
from maskformer.errors import DatasetError


def test_rgb2id_matches_panopticapi_formula():
    rgb = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [255, 255, 255], [7, 3, 2]]], np.uint8)
    ids = coco.rgb2id(rgb)
    assert ids.dtype == np.int32
    assert ids.tolist() == [[1, 256, 65536, 2**24 - 1, 7 + 3 * 256 + 2 * 65536]]
    assert np.array_equal(coco.id2rgb(ids), rgb)
    rnd = np.random.default_rng(0).integers(0, 2**24, (9, 11))
    assert np.array_equal(coco.rgb2id(coco.id2rgb(rnd)), rnd)
    with pytest.raises(ValueError):
        coco.id2rgb(np.array([[2**24]]))


def _runs_column_major(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts, computed by hand: runs of 0,1,0,... in Fortran order."""
    flat = mask.ravel(order="F").astype(np.uint8)
    counts, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(n)
            cur, n = v, 0
        n += 1
    counts.append(n)
    return counts


def test_rle_round_trip_and_uncompressed_rle():
    rng = np.random.default_rng(1)
    mask = rng.random((23, 31)) > 0.6
    rle = coco.encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [23, 31]
    json.dumps(rle)  # JSON-ready
    assert np.array_equal(coco.decode_rle(rle), mask)
    unc = {"size": [23, 31], "counts": _runs_column_major(mask)}
    assert np.array_equal(coco.decode_rle(unc, 23, 31), mask)
    assert np.array_equal(coco.segmentation_to_mask(unc, 23, 31), mask)
    with pytest.raises(DatasetError, match="differs from the image size"):
        coco.decode_rle(rle, 10, 10)


def _coco_from(tmp_path, images, anns, cats):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return COCO(str(p))


def test_polygons_match_pycocotools_ann_to_mask(tmp_path):
    polys = [[2.5, 3, 20, 4.2, 18, 17.7, 4, 15], [25, 2, 29, 2, 27, 9]]
    api = _coco_from(
        tmp_path,
        [{"id": 1, "file_name": "a.png", "height": 21, "width": 33}],
        [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": polys,
                "area": 1,
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
            }
        ],
        [{"id": 1, "name": "a"}],
    )
    expected = api.annToMask(api.anns[1]).astype(bool)
    got = coco.polygons_to_mask(polys, 21, 33)
    assert expected.sum() > 100
    assert np.array_equal(got, expected)


def test_read_json_reports_line_and_column(tmp_path):
    p = tmp_path / "panoptic.json"
    p.write_text('{\n  "images": [],\n  "annotations": [}\n')
    with pytest.raises(DatasetError, match=r"panoptic\.json: invalid JSON at line 3, column 19"):
        coco.read_json(p)
    with pytest.raises(DatasetError, match="not found"):
        coco.read_json(tmp_path / "missing.json")


def _two_samples():
    id_map = np.zeros((20, 24), np.int32)
    id_map[:10] = 1
    id_map[10:] = 2
    id_map[12:18, 3:9] = 7
    id_map[2:6, 15:22] = 9
    segs = [
        {"id": 1, "category_id": 5},
        {"id": 2, "category_id": 7},
        {"id": 7, "category_id": 0},
        {"id": 9, "category_id": 3, "iscrowd": 1},
    ]
    img = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    return [
        Sample(img, id_map, segs, 10, "a.jpg"),
        Sample(img[::-1].copy(), id_map[::-1].copy(), segs, 11, "b.png"),
    ]


def test_write_dataset_round_trip_with_pycocotools(tmp_path):
    meta = synthetic_meta()
    samples = _two_samples()
    out = coco.write_dataset(tmp_path / "ds", samples, meta)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png", "b.png"]
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temp files
    pan = json.loads((out / "panoptic.json").read_text())
    cats = {c["id"]: c for c in pan["categories"]}
    assert [c["isthing"] for c in pan["categories"]] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert cats[6]["color"] == list(meta.colors[5])
    info = {s["id"]: s for s in pan["annotations"][0]["segments_info"]}
    assert info[1]["category_id"] == 6 and info[7]["category_id"] == 1  # contiguous + 1
    assert info[7]["area"] == 36 and info[7]["bbox"] == [3, 12, 6, 6]
    png = coco.rgb2id(np.asarray(Image.open(out / "panoptic" / "a.png")))
    assert np.array_equal(png, samples[0].id_map)
    api = COCO(str(out / "instances.json"))
    anns = api.loadAnns(api.getAnnIds(imgIds=[11]))
    assert sorted(a["category_id"] for a in anns) == [1, 4]  # things only
    for a in anns:
        sid = 7 if a["category_id"] == 1 else 9
        assert np.array_equal(api.annToMask(a).astype(bool), samples[1].id_map == sid)
        assert a["iscrowd"] == (sid == 9)
