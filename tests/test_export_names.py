"""Export: imported names kept, collisions renamed and mapped in the JSON, include options and
the message that says what was left out."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from app.export import Selection, export_dataset, export_names, kept_name
from app.store import ImageRecord, Workspace
from maskformer.data import open_dataset
from maskformer.errors import UserError


def _bytes(seed: int, fmt: str = "PNG") -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    return buf.getvalue()


def _rec(i: int, name: str, suffix: str = ".png") -> ImageRecord:
    return ImageRecord(i, name, f"sha{i}", f"images/sha{i}{suffix}", 16, 12, "corrected")


def test_kept_name():
    assert kept_name("000000.png", ".png") == "000000.png"
    assert kept_name("Photo 1.JPEG", ".jpg") == "Photo 1.JPEG"  # same format, name untouched
    assert kept_name("scan.tiff", ".tif") == "scan.tiff"
    assert kept_name("scan", ".png") == "scan.png"  # no extension: the stored one is added
    assert kept_name("anim.heic", ".png") == "anim.heic.png"  # stored as PNG: say so
    assert kept_name("a\nb.png", ".png") == "a_b.png" and kept_name("..", ".png") == "image.png"
    assert len(kept_name("x" * 400 + ".png", ".png").encode()) <= 200


def test_export_names_rename_only_collisions():
    recs = [
        _rec(1, "a.png"),
        _rec(2, "b.png"),
        _rec(3, "a.png"),  # same name
        _rec(4, "A.jpg", ".jpg"),  # same stem, other case and format: same panoptic PNG name
        _rec(5, "a_2.png"),  # takes the name a renamed file would get
        _rec(6, "c.png"),
    ]
    names = export_names(recs)
    assert names == {
        1: "a.png",
        2: "b.png",
        3: "a_3.png",
        4: "A_4.jpg",
        5: "a_2.png",
        6: "c.png",
    }
    stems = [n.rsplit(".", 1)[0].casefold() for n in names.values()]
    assert len(set(stems)) == len(stems)


@pytest.fixture
def ws(tmp_path):
    """Four images: two named 000000.png (different bytes), one photo.jpeg, one unseen;
    a corrected annotation on 1 and 3, a prediction on 2 (accepted) and the jpeg."""
    w = Workspace(tmp_path / "ws")
    cat = w.add_category("thing").id
    one = w.add_image(_bytes(1), "000000.png").id
    two = w.add_image(_bytes(2), "000000.png").id
    jpg = w.add_image(_bytes(3, "JPEG"), "photo.jpeg").id
    w.add_image(_bytes(4), "later.png")
    m = np.zeros((12, 16), np.int32)
    m[2:6, 3:9] = 1
    seg = [{"id": 1, "category_id": cat, "isthing": True}]
    w.save_annotation(one, m, seg)
    w.save_prediction(two, m, seg, uncertainty=0.3)
    w.save_annotation(jpg, m, seg)
    w.set_review(two, "accepted")
    return w


def test_default_export_is_corrected_only_and_says_what_it_left_out(ws, tmp_path):
    report = export_dataset(ws, "coco-panoptic", tmp_path / "out")
    assert report.included == {"corrected": 2}
    assert report.left_out == {"predicted (not included)": 1, "unseen (no annotation yet)": 1}
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [
        "000000.png",
        "photo.jpeg",
    ]
    text = report.summary()
    assert "Exported 2 image(s) (2 corrected)" in text
    assert "Left out 2: 1 predicted (not included); 1 unseen (no annotation yet)" in text
    assert "Renamed" not in text
    ds = open_dataset(tmp_path / "out")
    assert len(ds) == 2


def test_colliding_names_are_renamed_and_mapped(ws, tmp_path):
    out = tmp_path / "out"
    report = export_dataset(ws, "coco-instances", out, Selection(("corrected", "predicted")))
    assert report.included == {"corrected": 2, "predicted": 1}
    assert report.renamed == [("000000.png", "000000_2.png")]
    assert "Renamed 1 colliding name(s): 000000.png → 000000_2.png" in report.summary()
    data = json.loads((out / "instances.json").read_text())
    mapping = {im["file_name"]: (im["original_file_name"], im["id"]) for im in data["images"]}
    ids = {r.name: r.id for r in ws.list_images()}
    assert mapping == {
        "000000.png": ("000000.png", 1),
        "000000_2.png": ("000000.png", 2),
        "photo.jpeg": ("photo.jpeg", ids["photo.jpeg"]),
    }
    for name, (_, image_id) in mapping.items():  # each file holds that image's own bytes
        assert (out / "images" / name).read_bytes() == (
            ws.root / ws.image(image_id).file
        ).read_bytes()
    coco = COCO(str(out / "instances.json"))  # pycocotools reads it, extra keys and all
    assert sorted(coco.getImgIds()) == sorted(i for _, i in mapping.values())
    assert len(coco.getAnnIds()) == 3


def test_panoptic_png_names_follow_the_renames(ws, tmp_path):
    out = tmp_path / "pan"
    export_dataset(ws, "coco-panoptic", out, Selection(("corrected", "predicted")))
    data = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["file_name"] for a in data["annotations"]) == [
        "000000.png",
        "000000_2.png",
        "photo.png",
    ]
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == [
        "000000.png",
        "000000_2.png",
        "photo.png",
    ]
    assert len(open_dataset(out)) == 3


def test_review_filter(ws, tmp_path):
    report = export_dataset(
        ws, "coco-panoptic", tmp_path / "acc", Selection(("corrected", "predicted"), "accepted")
    )
    assert report.included == {"predicted": 1}
    assert report.left_out == {
        "not reviewed (only accepted asked for)": 2,
        "unseen (no annotation yet)": 1,
    }
    assert report.renamed == []  # the only 000000.png exported keeps its name
    with pytest.raises(
        UserError,
        match=r"nothing to export: no image is corrected, review accepted; "
        r"left out 2 not reviewed .*1 predicted \(not incl",
    ):
        export_dataset(
            ws, "coco-panoptic", tmp_path / "none", Selection(("corrected",), "accepted")
        )
    assert not (tmp_path / "none").exists()


def test_bad_selection():
    with pytest.raises(UserError, match="unseen images have no annotation"):
        Selection(("unseen",))
    with pytest.raises(UserError, match="unknown review filter"):
        Selection(("corrected",), "maybe")


@pytest.mark.slow
def test_datumaro_reads_renamed_export(ws, tmp_path):
    """CVAT's dataset library reads an export with a renamed file: one item per image, each
    with its own mask."""
    dm = pytest.importorskip("datumaro", reason="datumaro is not installed")
    import shutil

    src = tmp_path / "inst"
    export_dataset(ws, "coco-instances", src, Selection(("corrected", "predicted")))
    root = tmp_path / "dm"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(src / "instances.json", root / "annotations" / "instances_default.json")
    shutil.copytree(src / "images", root / "images" / "default")
    dataset = dm.Dataset.import_from(str(root), "coco_instances")
    items = {it.attributes.get("id"): it for it in dataset}
    assert sorted(items) == sorted(r.id for r in ws.list_images() if r.status != "unseen")
    for image_id, item in items.items():
        id_map = ws.load_annotation(image_id)[0]
        (mask,) = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        np.testing.assert_array_equal(mask.image.astype(bool), id_map == 1)
