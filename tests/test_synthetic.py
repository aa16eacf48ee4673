"""The synthetic dataset: determinism, class layout, instance constraints, the synth CLI."""

import json

import numpy as np
import pytest

from maskformer.__main__ import main
from maskformer.data import open_dataset
from maskformer.data.synthetic import (
    CLASS_NAMES,
    MIN_VISIBLE_PIXELS_128,
    generate_sample,
    write_synthetic_dataset,
)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = _files(write_synthetic_dataset(tmp_path / "a", 20, seed=7, size=64, workers=1))
    b = _files(write_synthetic_dataset(tmp_path / "b", 20, seed=7, size=64, workers=2))
    c = _files(write_synthetic_dataset(tmp_path / "c", 20, seed=8, size=64))
    assert len(a) == 2 * 20 + 2
    assert a == b
    assert a["panoptic.json"] != c["panoptic.json"]
    assert a["images/000000.png"] != c["images/000000.png"]


def test_categories_and_meta(tmp_path):
    root = write_synthetic_dataset(tmp_path / "d", 2, seed=0, size=64)
    cats = json.loads((root / "panoptic.json").read_text())["categories"]
    assert [c["name"] for c in cats] == list(CLASS_NAMES) and len(cats) == 8
    assert [c["isthing"] for c in cats] == [1] * 5 + [0] * 3
    assert all(len(c["color"]) == 3 for c in cats)
    meta = open_dataset(root).meta
    assert meta.num_classes == 8 and meta.thing_ids == (0, 1, 2, 3, 4)


def test_content_statistics():
    size = 128
    samples = [generate_sample(i, seed=0, size=size) for i in range(60)]
    counts = np.zeros(8, int)
    colours = {c: [] for c in range(5)}
    n_things = []
    for s in samples:
        assert s.image.shape == (size, size, 3) and s.id_map.dtype == np.int32
        assert {g["id"] for g in s.segments} == set(np.unique(s.id_map)) - {0}
        things = [g for g in s.segments if g["isthing"]]
        n_things.append(len(things))
        for g in s.segments:
            assert g["area"] == (s.id_map == g["id"]).sum()
            assert g["isthing"] == (g["category_id"] < 5)
            counts[g["category_id"]] += 1
            if g["isthing"]:
                assert g["area"] >= MIN_VISIBLE_PIXELS_128  # no slivers
                colours[g["category_id"]].append(s.image[s.id_map == g["id"]].mean(0))
        assert (s.id_map == 0).mean() < 0.05  # little void
    assert (counts > 5).all()  # every class shows up
    assert max(n_things) <= 8 and min(n_things) <= 1 and max(n_things) >= 6
    for c in range(5):  # colour does not give the class away: wide spread within each class
        assert np.std(np.array(colours[c]), axis=0).mean() > 40


def test_synth_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(["synth", "--out", str(out), "--num-images", "3", "--seed", "1", "--size", "48"]) == 0
    )
    assert "wrote 3 images" in capsys.readouterr().out
    ds = open_dataset(out)
    assert len(ds) == 3 and ds.load(0).image.shape == (48, 48, 3)
    assert main(["synth", "--out", str(out), "--num-images", "0"]) == 2
    assert "--num-images must be at least 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "file"), "--num-images", "1"]) == 2


@pytest.mark.slow
def test_synth_speed(tmp_path):
    import time

    t = time.perf_counter()
    write_synthetic_dataset(tmp_path / "speed", 100, seed=0, size=128)
    assert time.perf_counter() - t < 30  # ~3 s on an idle core; generous for shared CI
