"""Readers by path (COCO panoptic, COCO instances, semantic folders) and their validation errors."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from maskformer.data import coco, open_coco_panoptic, open_dataset
from maskformer.data.synthetic import synthetic_meta, write_synthetic_dataset
from maskformer.errors import DatasetError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", 12, seed=5, size=64)


@pytest.fixture
def synth_copy(synth, tmp_path):
    return shutil.copytree(synth, tmp_path / "ds")


def _load_json(p):
    return json.loads(p.read_text())


def _dump(p, obj):
    p.write_text(json.dumps(obj, indent=1))


# ---------------------------------------------------------------------------------------------
# COCO panoptic (the synth / export layout)


def test_synth_round_trip_sample_consistency(synth):
    ds = open_dataset(synth)
    assert ds.format == "coco_panoptic" and len(ds) == 12
    assert ds.meta.class_names == synthetic_meta().class_names
    assert ds.meta.isthing == synthetic_meta().isthing and ds.meta.dataset_ids == tuple(range(1, 9))
    ds.validate()
    for i in range(len(ds)):
        s = ds.load(i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.id_map.shape == (64, 64) and s.id_map.dtype == np.int32
        assert set(np.unique(s.id_map)) - {0} == {seg["id"] for seg in s.segments}
        for seg in s.segments:
            assert seg["area"] == int((s.id_map == seg["id"]).sum()) > 0
            assert seg["isthing"] == ds.meta.isthing[seg["category_id"]]
            assert seg["iscrowd"] == 0
        assert s.file_name == f"{i:06d}.png" and s.image_id == i


def test_instances_rle_matches_panoptic_things(synth):
    pan = open_dataset(synth)
    api = COCO(str(synth / "instances.json"))
    n_things = 0
    for i in range(len(pan)):
        s = pan.load(i)
        things = {seg["id"]: seg for seg in s.segments if seg["isthing"]}
        anns = api.loadAnns(api.getAnnIds(imgIds=[s.image_id]))
        assert len(anns) == len(things)
        for a in anns:
            m = api.annToMask(a).astype(bool)
            sid = int(np.bincount(s.id_map[m]).argmax())
            assert np.array_equal(m, s.id_map == sid)
            assert a["category_id"] == pan.meta.dataset_ids[things[sid]["category_id"]]
            assert a["area"] == things[sid]["area"]
        n_things += len(anns)
    assert n_things > 10
    inst = open_dataset(synth / "instances.json")  # and our own instances reader agrees
    assert inst.format == "coco_instances"
    s_pan, s_inst = pan.load(4), inst.load(4)
    things = s_pan.id_map * np.isin(s_pan.id_map, [g["id"] for g in s_pan.segments if g["isthing"]])
    assert np.array_equal(things > 0, s_inst.id_map > 0)


def test_open_panoptic_by_json_path_and_explicit_dirs(synth, tmp_path):
    assert len(open_dataset(synth / "panoptic.json")) == 12
    moved = tmp_path / "elsewhere"
    shutil.copytree(synth / "images", moved / "imgs")
    shutil.copytree(synth / "panoptic", moved / "pngs")
    shutil.copy(synth / "panoptic.json", moved / "pan.json")
    ds = open_coco_panoptic(moved / "pan.json", moved / "pngs", moved / "imgs")
    assert np.array_equal(ds.load(2).id_map, open_dataset(synth).load(2).id_map)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not a dataset folder"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# validation errors: each names the file and the value


def test_error_category_not_in_categories(synth_copy):
    d = _load_json(synth_copy / "panoptic.json")
    d["annotations"][2]["segments_info"][0]["category_id"] = 99
    _dump(synth_copy / "panoptic.json", d)
    with pytest.raises(
        DatasetError,
        match=r"panoptic\.json: annotations\[2\] \(000002\.png\): "
        r"segment \d+ has category_id 99, which is not in",
    ):
        open_dataset(synth_copy)


def test_error_wrong_type(synth_copy):
    d = _load_json(synth_copy / "panoptic.json")
    d["annotations"][0]["segments_info"][1]["category_id"] = "3"
    _dump(synth_copy / "panoptic.json", d)
    with pytest.raises(
        DatasetError, match=re.escape("segments_info[1].category_id must be an integer, got '3'")
    ):
        open_dataset(synth_copy)


def test_error_broken_json(synth_copy):
    text = (synth_copy / "panoptic.json").read_text()
    (synth_copy / "panoptic.json").write_text(text[:-20])
    with pytest.raises(DatasetError, match=r"panoptic\.json: invalid JSON at line 1, column \d+"):
        open_dataset(synth_copy)


def test_error_missing_image_file(synth_copy):
    (synth_copy / "images" / "000003.png").unlink()
    with pytest.raises(DatasetError, match=r"images/000003\.png: image file not found"):
        open_dataset(synth_copy)


def test_error_png_size_differs_from_image(synth_copy):
    png = synth_copy / "panoptic" / "000001.png"
    Image.open(png).crop((0, 0, 64, 48)).save(png)
    ds = open_dataset(synth_copy)  # cheap checks pass; full validation reads the PNG
    with pytest.raises(
        DatasetError,
        match=r"panoptic/000001\.png: size 64x48 differs from its "
        r"image images/000001\.png \(64x64\)",
    ):
        ds.validate()


def test_error_segment_absent_from_png(synth_copy):
    d = _load_json(synth_copy / "panoptic.json")
    d["annotations"][5]["segments_info"].append({"id": 4321, "category_id": 1, "iscrowd": 0})
    _dump(synth_copy / "panoptic.json", d)
    with pytest.raises(
        DatasetError,
        match=r"panoptic/000005\.png: segment id 4321 from "
        "segments_info is absent from the PNG",
    ):
        open_dataset(synth_copy).validate()


def test_error_png_id_not_in_segments_info(synth_copy):
    png = synth_copy / "panoptic" / "000007.png"
    ids = coco.rgb2id(np.asarray(Image.open(png)))
    ids[:3, :3] = 777
    Image.fromarray(coco.id2rgb(ids)).save(png)
    ds = open_dataset(synth_copy)
    with pytest.raises(
        DatasetError,
        match=r"panoptic/000007\.png: id 777 in the PNG is not in "
        "segments_info",
    ):
        ds.validate()
    assert 777 not in ds.load(7).id_map  # loading treats unknown ids as void


def test_validate_collects_several_problems(synth_copy):
    for k in (1, 2, 3):
        png = synth_copy / "panoptic" / f"00000{k}.png"
        Image.open(png).crop((0, 0, 60, 64)).save(png)
    with pytest.raises(DatasetError, match=r"^3 problems in .*000001.*000002.*000003"):
        open_dataset(synth_copy).validate()
    with pytest.raises(DatasetError, match=r"and 2 more$"):
        open_dataset(synth_copy).validate(max_errors=1)


# ---------------------------------------------------------------------------------------------
# COCO instances: polygons, RLE (compressed + uncompressed), crowd


def _uncompressed(mask):
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], edges])).tolist()}


@pytest.fixture
def instances_json(tmp_path):
    h, w = 40, 50
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / "im.png")
    yy, xx = np.mgrid[:h, :w]
    ellipse = ((yy - 28) / 8.0) ** 2 + ((xx - 12) / 10.0) ** 2 <= 1
    crowd = (yy >= 5) & (yy < 15) & (xx >= 35) & (xx < 48)
    small = (yy >= 25) & (yy < 29) & (xx >= 8) & (xx < 14)  # lies on the ellipse
    anns = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": [[2, 2, 20, 2, 20, 14, 2, 14]],
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 7,
            "iscrowd": 0,
            "segmentation": coco.encode_rle(ellipse),
        },
        {
            "id": 12,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 1,
            "segmentation": _uncompressed(crowd),
        },
        {
            "id": 13,
            "image_id": 1,
            "category_id": 7,
            "iscrowd": 0,
            "segmentation": coco.encode_rle(small),
        },
    ]
    for a in anns:
        a.update(area=1.0, bbox=[0, 0, 1, 1])
    cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    p = tmp_path / "inst.json"
    _dump(
        p,
        {
            "images": [{"id": 1, "file_name": "im.png", "height": h, "width": w}],
            "annotations": anns,
            "categories": cats,
        },
    )
    return p


def test_instances_reader_matches_pycocotools(instances_json):
    ds = open_dataset(instances_json)
    ds.validate()
    assert ds.meta.class_names == ("dog", "cat") and ds.meta.dataset_ids == (7, 3)
    s = ds.load(0)
    api = COCO(str(instances_json))
    ref = {a["id"]: api.annToMask(a).astype(bool) for a in api.loadAnns(api.getAnnIds())}
    segs = {g["id"]: g for g in s.segments}
    assert np.array_equal(s.id_map == 1, ref[10]) and segs[1]["category_id"] == 1  # cat
    assert np.array_equal(s.id_map == 3, ref[12]) and segs[3]["iscrowd"] == 1
    assert np.array_equal(s.id_map == 4, ref[13])  # the small one is painted on top
    assert np.array_equal(s.id_map == 2, ref[11] & ~ref[13]) and segs[2]["category_id"] == 0
    assert segs[2]["area"] == int((ref[11] & ~ref[13]).sum())
    assert all(g["isthing"] for g in s.segments)


def test_instances_errors(instances_json):
    d = _load_json(instances_json)
    d["annotations"][1]["category_id"] = 5
    _dump(instances_json, d)
    with pytest.raises(
        DatasetError,
        match=r"inst\.json: annotations\[1\] \(image im\.png\) has "
        "category_id 5, which is not in categories",
    ):
        open_dataset(instances_json)
    d["annotations"][1]["category_id"] = 7
    d["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5]]
    _dump(instances_json, d)
    with pytest.raises(DatasetError, match=r"segmentation\[0\] has 5 coordinates"):
        open_dataset(instances_json)
    d["annotations"][0]["segmentation"] = {"size": [10, 10], "counts": "abc"}
    _dump(instances_json, d)
    with pytest.raises(
        DatasetError, match=r"size \[10, 10\] differs from the image size \[40, 50\]"
    ):
        open_dataset(instances_json)


# ---------------------------------------------------------------------------------------------
# semantic folders


def _semantic(root, labels, names=None):
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for k, lab in enumerate(labels):
        h, w = lab.shape
        Image.fromarray(np.full((h, w, 3), 40 * k, np.uint8)).save(root / "images" / f"img_{k}.jpg")
        Image.fromarray(lab.astype(np.uint8)).save(root / "annotations" / f"img_{k}.png")
    if names is not None:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def test_semantic_ade_shift(tmp_path):
    lab = np.array([[0, 1, 1, 150], [2, 2, 0, 255]], np.uint8)
    root = _semantic(tmp_path / "ade", [lab], [f"c{i}" for i in range(150)])
    ds = open_dataset(root, ade_shift=True)
    ds.validate()
    s = ds.load(0)
    # class = value - 1, 0 -> void (ignored), 255 stays ignored; segment id = class + 1
    assert s.id_map.tolist() == [[0, 1, 1, 150], [2, 2, 0, 0]]
    assert [(g["id"], g["category_id"], g["area"]) for g in s.segments] == [
        (1, 0, 2),
        (2, 1, 2),
        (150, 149, 1),
    ]
    assert ds.meta.class_names[149] == "c149" and not any(ds.meta.isthing)
    plain = open_dataset(root)  # without the shift, 150 is out of range for 150 classes
    with pytest.raises(DatasetError, match=r"annotations/img_0\.png: label 150 out of range"):
        plain.validate()


def test_semantic_label_out_of_range_message(tmp_path):
    labels = [np.zeros((8, 8), np.uint8) for _ in range(4)]
    labels[3][2, 2] = 173
    root = _semantic(tmp_path / "sem", labels, [f"c{i}" for i in range(150)])
    ds = open_dataset(root)
    with pytest.raises(DatasetError) as e:
        ds.validate()
    assert str(e.value) == "annotations/img_3.png: label 173 out of range for 150 classes"


def test_semantic_generic_classes_palette_labels_and_ignore(tmp_path):
    lab = np.array([[0, 3, 255], [3, 3, 1]], np.uint8)
    img = Image.new("P", (3, 2))
    img.putdata(lab.ravel().tolist())
    img.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    root = _semantic(tmp_path / "s", [lab])
    img.save(root / "annotations" / "img_0.png")  # palette PNG: indices are the labels
    ds = open_dataset(root)
    assert ds.meta.num_classes == 4 and ds.meta.class_names[0] == "class_0"
    s = ds.load(0)
    assert s.id_map.tolist() == [[1, 4, 0], [4, 4, 2]]
    assert s.image_id == "img_0" and s.file_name == "img_0.jpg"


def test_semantic_pairing_and_rgb_label_errors(tmp_path):
    root = _semantic(tmp_path / "s", [np.zeros((4, 4), np.uint8)] * 2, ["a", "b"])
    (root / "annotations" / "img_1.png").unlink()
    with pytest.raises(DatasetError, match=r"images/img_1\.jpg: no label file for it"):
        open_dataset(root)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "annotations" / "img_1.png")
    with pytest.raises(DatasetError, match=r"annotations/img_1\.png: label image has mode RGB"):
        open_dataset(root).validate()
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(root / "annotations" / "img_1.png")
    with pytest.raises(
        DatasetError,
        match=r"annotations/img_1\.png: size 4x5 differs from its "
        r"image images/img_1\.jpg \(4x4\)",
    ):
        open_dataset(root).validate()
