"""Workspace import/export: COCO in, COCO out, checked by our readers, pycocotools and Datumaro."""

import json
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from app import transfer
from app.__main__ import main as cli
from app.editing import make_annotation, relabel
from app.store import Workspace
from app_helpers import png_bytes
from maskformer.data import open_dataset
from maskformer.data.base import Sample
from maskformer.data.coco import write_dataset
from maskformer.data.synthetic import synthetic_meta
from maskformer.errors import DatasetError, ImageReadError, UserError


def _sample(i: int) -> Sample:
    """48x64: sky (id 1) on top, grass (id 2) below, a circle (3) and two squares (4, 5)."""
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    m = np.ones((48, 64), np.int32)
    m[24:] = 2
    ys, xs = np.mgrid[0:48, 0:64]
    m[(ys - 30) ** 2 + (xs - 15 - i) ** 2 < 36] = 3
    m[5:12, 40:50] = 4
    m[35:44, 45 + i : 55 + i] = 5
    m[0, 0] = 0  # one void pixel
    segs = [
        {"id": 1, "category_id": 5, "iscrowd": 0, "isthing": False},
        {"id": 2, "category_id": 6, "iscrowd": 0, "isthing": False},
        {"id": 3, "category_id": 0, "iscrowd": 0, "isthing": True},
        {"id": 4, "category_id": 1, "iscrowd": 0, "isthing": True},
        {"id": 5, "category_id": 1, "iscrowd": 0, "isthing": True},
    ]
    return Sample(image, m, segs, i + 1, f"img_{i}.png")


@pytest.fixture
def coco(tmp_path):
    """A COCO dataset in the project layout, written by the data package (not by the app)."""
    return write_dataset(tmp_path / "coco", [_sample(i) for i in range(3)], synthetic_meta())


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def _names(ws):
    return {c.id: c.name for c in ws.categories()}


def _check_same(ws, rec_id, sample, meta):
    """The stored annotation equals the sample: same pixels per segment, same class names."""
    id_map, segs, source = ws.load_annotation(rec_id)
    np.testing.assert_array_equal(id_map, sample.id_map)
    names = _names(ws)
    got = {s["id"]: names[s["category_id"]] for s in segs}
    assert got == {s["id"]: meta.class_names[s["category_id"]] for s in sample.segments}
    assert source == "import"


def test_import_coco_panoptic(ws, coco):
    report = transfer.import_source(ws, coco)
    assert (report.added, report.annotated) == (3, 3)
    recs = ws.list_images()
    assert [r.status for r in recs] == ["corrected"] * 3
    assert recs[0].counts == {"sky": 1, "grass": 1, "circle": 1, "square": 2}
    for rec, i in zip(recs, range(3)):
        _check_same(ws, rec.id, _sample(i), synthetic_meta())
        assert (ws.root / rec.file).read_bytes() == (coco / "images" / f"img_{i}.png").read_bytes()
    again = transfer.import_source(ws, coco / "panoptic.json")
    assert (again.added, again.duplicates) == (0, 3) and len(ws.list_images()) == 3


def test_import_coco_instances(ws, coco):
    transfer.import_source(ws, coco / "instances.json")
    ref = open_dataset(coco / "instances.json")
    for rec, i in zip(ws.list_images(), range(3)):
        _check_same(ws, rec.id, ref.load(i), ref.meta)
    assert set(ws.list_images()[0].counts) == {"circle", "square"}  # instances: things only


def test_import_image_folder_skips_bad_files(ws, tmp_path):
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes(seed=1))
    (folder / "sub" / "b.png").write_bytes(png_bytes(seed=2))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (folder / "notes.txt").write_text("ignored")
    report = transfer.import_source(ws, folder)
    assert report.added == 2 and len(report.skipped) == 1 and "broken.jpg" in report.skipped[0]
    assert "skipped 1 unreadable" in report.summary()
    assert [r.status for r in ws.list_images()] == ["unseen", "unseen"]
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        transfer.import_source(ws, [folder / "a.png"])


def _break(coco, edit):
    data = json.loads((coco / "panoptic.json").read_text())
    edit(data)
    (coco / "panoptic.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda c: (c / "panoptic.json").write_text('{"images": ['), "invalid JSON"),
        (
            lambda c: _break(
                c, lambda d: d["annotations"][1]["segments_info"][0].update(category_id=99)
            ),
            "99",
        ),
        (lambda c: (c / "panoptic" / "img_2.png").unlink(), "img_2.png"),
        (lambda c: (c / "images" / "img_1.png").write_bytes(b"garbage"), "img_1.png"),
    ],
)
def test_broken_coco_leaves_workspace_unchanged(ws, coco, damage, match):
    damage(coco)
    cats = ws.categories()
    with pytest.raises(DatasetError, match=match):
        transfer.import_source(ws, coco)
    assert ws.list_images() == [] and ws.categories() == cats
    assert list((ws.root / "images").iterdir()) == []


def _corrected_workspace(ws, coco):
    """Import the dataset, then relabel one segment with a brand-new class, as a user would."""
    transfer.import_source(ws, coco)
    rec = ws.list_images()[1]
    id_map, segs, _ = ws.load_annotation(rec.id)
    kite = ws.add_category("kite", isthing=True)
    ann = relabel(make_annotation(id_map, segs), 4, kite.id, True)
    ws.save_annotation(rec.id, ann.id_map, list(ann.segments))
    return ws


def test_export_panoptic_reads_back_identically(ws, coco, tmp_path):
    _corrected_workspace(ws, coco)
    out = transfer.export(ws, "coco-panoptic", tmp_path / "out")
    ds = open_dataset(out)
    assert len(ds) == 3 and "kite" in ds.meta.class_names
    for rec, i in zip(ws.list_images(), range(3)):
        sample = ds.load(i)
        id_map, segs, _ = ws.load_annotation(rec.id)
        np.testing.assert_array_equal(sample.id_map, id_map)  # exact pixels, same segment ids
        names = _names(ws)
        assert {s["id"]: ds.meta.class_names[s["category_id"]] for s in sample.segments} == {
            s["id"]: names[s["category_id"]] for s in segs
        }
        assert {s["id"]: s["isthing"] for s in sample.segments} == {
            s["id"]: bool(s["isthing"]) for s in segs
        }
        np.testing.assert_array_equal(sample.image, ws.load_image(rec.id))
    with pytest.raises(UserError, match="not an empty folder"):
        transfer.export(ws, "coco-panoptic", out)


def test_export_instances_masks_decode_exactly(ws, coco, tmp_path):
    _corrected_workspace(ws, coco)
    out = transfer.export(ws, "coco-instances", tmp_path / "out")
    data = json.loads((out / "instances.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    assert all("isthing" in c for c in cats.values()) and cats
    images = {im["id"]: im for im in data["images"]}
    names = _names(ws)
    n_things = 0
    for rec in ws.list_images():
        id_map, segs, _ = ws.load_annotation(rec.id)
        assert (images[rec.id]["height"], images[rec.id]["width"]) == id_map.shape
        anns = [a for a in data["annotations"] if a["image_id"] == rec.id]
        things = [s for s in segs if s["isthing"]]
        n_things += len(things)
        assert len(anns) == len(things)
        for a, s in zip(anns, things):  # pycocotools, not our decoder
            rle = {
                "size": a["segmentation"]["size"],
                "counts": a["segmentation"]["counts"].encode(),
            }
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), id_map == s["id"])
            assert cats[a["category_id"]]["name"] == names[s["category_id"]]
            assert a["area"] == int((id_map == s["id"]).sum())
    assert len(data["annotations"]) == n_things
    ds = open_dataset(out)  # our training reader
    for rec, i in zip(ws.list_images(), range(3)):
        id_map, segs, _ = ws.load_annotation(rec.id)
        sample = ds.load(i)
        got = sorted(
            (ds.meta.class_names[s["category_id"]], (sample.id_map == s["id"]).tobytes())
            for s in sample.segments
        )
        want = sorted(
            (names[s["category_id"]], (id_map == s["id"]).tobytes()) for s in segs if s["isthing"]
        )
        assert got == want


def test_export_needs_corrections(ws, tmp_path):
    ws.add_image(png_bytes(), "x.png")
    with pytest.raises(UserError, match="nothing to export"):
        transfer.export(ws, "coco-panoptic", tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out.*")) == []
    with pytest.raises(UserError, match="unknown export format"):
        transfer.export(ws, "yolo", tmp_path / "out")


def test_export_zip(ws, coco):
    _corrected_workspace(ws, coco)
    path = transfer.export_zip(ws, "coco-panoptic")
    assert path.suffix == ".zip" and path.parent == ws.root / "exports"


def test_cli_import_export(coco, tmp_path, capsys):
    wsdir = tmp_path / "cli-ws"
    assert cli(["import", "--workspace", str(wsdir), str(coco)]) == 0
    assert "imported 3 new image(s)" in capsys.readouterr().out
    out = tmp_path / "cli-out"
    assert (
        cli(["export", "--workspace", str(wsdir), "--format", "coco-panoptic", "--out", str(out)])
        == 0
    )
    assert len(open_dataset(out)) == 3
    assert cli(["import", "--workspace", str(wsdir), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such file" in err and err.count("\n") == 1
    assert (
        cli(
            [
                "export",
                "--workspace",
                str(tmp_path / "nope"),
                "--format",
                "coco-instances",
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert "not a workspace" in capsys.readouterr().err


def test_datumaro_reads_our_export(ws, coco, tmp_path):
    """CVAT's dataset library reads what we export (counts, labels, masks)."""
    dm = pytest.importorskip("datumaro", reason="datumaro is not installed")
    _corrected_workspace(ws, coco)
    names = _names(ws)
    pan = transfer.export(ws, "coco-panoptic", tmp_path / "pan")
    inst = transfer.export(ws, "coco-instances", tmp_path / "inst")
    # Datumaro expects COCO's own layout: annotations/<task>_<subset>.json + images/<subset>/
    for src, task in [(pan, "panoptic"), (inst, "instances")]:
        root = tmp_path / f"dm-{task}"
        (root / "annotations").mkdir(parents=True)
        shutil.copy(src / f"{task}.json", root / "annotations" / f"{task}_default.json")
        shutil.copytree(src / "images", root / "images" / "default")
        if task == "panoptic":
            shutil.copytree(src / "panoptic", root / "annotations" / "panoptic_default")
        dataset = dm.Dataset.import_from(str(root), f"coco_{task}")
        labels = dataset.categories()[dm.AnnotationType.label]
        assert len(dataset) == 3
        for rec in ws.list_images():
            id_map, segs, _ = ws.load_annotation(rec.id)
            item = next(it for it in dataset if it.attributes.get("id") == rec.id)
            masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
            want = [s for s in segs if task == "panoptic" or s["isthing"]]
            assert len(masks) == len(want)
            got = sorted((labels[m.label].name, m.image.astype(bool).tobytes()) for m in masks)
            assert got == sorted(
                (names[s["category_id"]], (id_map == s["id"]).tobytes()) for s in want
            )
