"""Hostile data reaches pycocotools' C code only after Python checked it; files stay in the dataset.

Each kind from issue 18: geometry and declared sizes (pycocotools crashed with signal 11), RLE
strings (assorted tracebacks), JSON nested too deeply, file names leaving the dataset, two
categories of one name, degenerate image shapes, and file names too long to write.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from hostile_cases import H, W, instances, nested_coco, panoptic, png, png_declaring, square
from maskformer.data import coco, open_dataset
from maskformer.errors import DatasetError, ImageReadError
from maskformer.image_io import MAX_ASPECT_RATIO, load_image


def _runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with zeros, computed here (not by pycocotools)."""
    flat = mask.T.ravel().astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    return [*runs, n]


# ---------------------------------------------------------------------------------------------
# RLE strings: our Python reading of the format agrees with pycocotools on valid data


@pytest.mark.parametrize("seed", range(6))
def test_rle_counts_reads_what_pycocotools_writes(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 300, 2)
    mask = rng.random((h, w)) > rng.uniform(0.05, 0.95)
    if seed == 0:
        mask[:] = True  # one run of zeros (0) then everything: a long first count
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert coco.rle_counts(rle["counts"]) == _runs(mask)
    assert coco.check_rle(rle, int(h), int(w)) == (h, w)
    assert np.array_equal(coco.decode_rle(rle), mask)


@pytest.mark.parametrize(
    "counts, message",
    [
        ("0j1", "add up to"),  # fewer pixels than h * w: pycocotools returns uninitialised memory
        ("\u00ff\u00fe", "ASCII"),
        ("é", "ASCII"),
        ("o", "middle of a number"),  # a continuation bit at the end: C reads past the string
        ("zz", "'0'..'o'"),
        ("ooooooo1", "too large"),  # more than 30 bits: C shifts past the int's width
        ([H * W + 5, -5], "negative"),
        ([10**9], "add up to"),
        (["1"], "integers"),
        ({"a": 1}, "string or a list"),
    ],
)
def test_bad_rle_is_refused_before_pycocotools(counts, message):
    with pytest.raises(DatasetError, match=message):
        coco.decode_rle({"size": [H, W], "counts": counts})
    with pytest.raises(DatasetError, match=message):
        coco.segmentation_to_mask({"size": [H, W], "counts": counts}, H, W)


@pytest.mark.parametrize(
    "size", [[200000, 200000], [0, 5], [-1, 5], [5.0, 5], ["5", 5], [True, 5], [5], "5x5"]
)
def test_rle_sizes_out_of_range_are_refused(size):
    with pytest.raises(DatasetError, match="size"):
        coco.decode_rle({"size": size, "counts": [25]})


# ---------------------------------------------------------------------------------------------
# polygons


@pytest.mark.parametrize(
    "poly, message",
    [
        ([0, 0, 1e9, 0, 1e9, 1e9], "outside"),  # pycocotools: signal 11
        ([-1e9, 0, 5, 0, 5, 5], "outside"),
        ([0, 0, float("nan"), 0, 5, 5], "finite"),  # signal 11 as well
        ([0, 0, float("inf"), 0, 5, 5], "finite"),
        ([0, 0, W + 1.5, 0, 5, 5], "outside"),
        ([1, 2, 3, 4, 5], "5 coordinates"),
        ([1, 2, "3", 4, 5, 6], "numbers"),
    ],
)
def test_bad_polygons_are_refused_before_pycocotools(poly, message):
    with pytest.raises(DatasetError, match=message):
        coco.segmentation_to_mask([poly], H, W)


def test_polygons_on_the_border_equal_pycocotools():
    polys = [[0, 0, W + 0.5, 0, W + 0.5, H + 0.5, -0.5, H], square()]
    got = coco.segmentation_to_mask(polys, H, W)
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))).astype(bool)
    assert got.sum() > H * W * 0.9 and np.array_equal(got, ref)


def test_the_crashing_inputs_crash_pycocotools_itself():
    """Proof the checks matter: unguarded, these kill the process with signal 11."""
    code = (
        "from pycocotools import mask as m\n"
        "r = m.frPyObjects([[0, 0, 1e9, 0, 1e9, 1e9]], 40, 50)\n"
        "m.decode(m.merge(r))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
    assert r.returncode == -11, r.returncode


# ---------------------------------------------------------------------------------------------
# declared sizes: checked against the real image before any mask is decoded at them


def test_declared_size_is_checked_before_decoding(tmp_path, monkeypatch):
    ds = open_dataset(instances(tmp_path / "a", image={"height": 4000, "width": 3000}))
    decoded = []
    monkeypatch.setattr(coco.mask_utils, "decode", lambda r: decoded.append(r) or 0)
    with pytest.raises(DatasetError, match=r"size 50x40 differs from instances\.json"):
        ds.load_labels(0)
    with pytest.raises(DatasetError, match="size 50x40 differs"):
        ds.validate()
    assert decoded == []


@pytest.mark.parametrize(
    "image", [{"height": 200000, "width": 200000}, {"height": 0}, {"width": -3}]
)
def test_absurd_declared_sizes_are_refused_when_opening(tmp_path, image):
    with pytest.raises(DatasetError, match="out of range"):
        open_dataset(instances(tmp_path, image=image))


def test_panoptic_png_declaring_a_huge_size_is_refused_from_its_header(tmp_path):
    ds = open_dataset(panoptic(tmp_path, png_data=png_declaring(200000, 200000)))
    with pytest.raises(DatasetError, match="too large|out of range"):
        ds.validate()


# ---------------------------------------------------------------------------------------------
# JSON


def test_deeply_nested_json_is_one_error(tmp_path):
    with pytest.raises(DatasetError, match="nested too deeply"):
        open_dataset(instances(tmp_path, raw=nested_coco(100_000)))


def test_a_5000_digit_integer_is_one_error(tmp_path):
    raw = '{"images": [], "annotations": [], "categories": [{"id": ' + "9" * 5000 + "}]}"
    with pytest.raises(DatasetError, match="invalid JSON"):
        open_dataset(instances(tmp_path, raw=raw))


# ---------------------------------------------------------------------------------------------
# files from outside the dataset


def test_file_names_leaving_the_dataset_are_refused(tmp_path):
    (tmp_path / "outside.png").write_bytes(png(seed=9))
    for k, name in enumerate(["/etc/hostname", "../../../outside.png", "im.png\x00x"]):
        with pytest.raises(DatasetError, match="leaves the image folder"):
            open_dataset(instances(tmp_path / str(k) / "a" / "b", image={"file_name": name}))
    p = instances(tmp_path / "link", image={"file_name": "link.png"})
    os.symlink(tmp_path / "outside.png", tmp_path / "link" / "images" / "link.png")
    with pytest.raises(DatasetError, match="leaves the image folder"):
        open_dataset(p)


def test_files_in_sub_folders_and_symlinks_inside_are_fine(tmp_path):
    p = instances(tmp_path, image={"file_name": "sub/im.png"})
    (tmp_path / "images" / "sub").mkdir()
    os.symlink(tmp_path / "images" / "im.png", tmp_path / "images" / "sub" / "im.png")
    assert open_dataset(p).load(0).image.shape == (H, W, 3)


def test_panoptic_png_names_leaving_their_folder_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="leaves the panoptic PNG's folder"):
        open_dataset(panoptic(tmp_path / "a", png_name="../../etc/hostname"))


def test_semantic_labels_symlinked_outside_are_refused(tmp_path):
    from hostile_cases import semantic

    root = semantic(tmp_path / "ds")
    (root / "annotations" / "a.png").unlink()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", root / "annotations" / "a.png")
    with pytest.raises(DatasetError, match="symlink to outside"):
        open_dataset(root)


def test_within_keeps_a_panoptic_json_from_probing_outside(tmp_path):
    """COCO's layout puts images one level up (annotations/x.json + x/): not under ``within``."""
    root = tmp_path / "root"
    panoptic(root / "annotations")
    (root / "annotations" / "panoptic.json").rename(root / "annotations" / "panoptic_x.json")
    (root / "annotations" / "panoptic").rename(root / "annotations" / "panoptic_x")
    (tmp_path / "root" / "x").mkdir()
    ds = open_dataset(root / "annotations" / "panoptic_x.json", within=root / "annotations")
    assert ds.image_dir.resolve().is_relative_to((root / "annotations").resolve())


# ---------------------------------------------------------------------------------------------
# categories


def test_two_categories_of_one_name_are_refused(tmp_path):
    cats = [{"id": 1, "name": "sky", "isthing": 0}, {"id": 2, "name": "sky", "isthing": 1}]
    with pytest.raises(
        DatasetError, match=r"categories\[1\] has the name 'sky' of categories\[0\]"
    ):
        open_dataset(instances(tmp_path / "a", categories=cats))
    with pytest.raises(DatasetError, match="unique"):
        open_dataset(panoptic(tmp_path / "b", categories=cats))
    cats = [{"id": 1, "name": "sky"}, {"id": 2, "name": " sky "}]  # one name in the workspace
    with pytest.raises(DatasetError, match="unique"):
        open_dataset(instances(tmp_path / "c", categories=cats))


# ---------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("h, w", [(1, 4000), (4000, 1), (2, 2 * MAX_ASPECT_RATIO + 2)])
def test_degenerate_shapes_are_refused_from_the_header(h, w):
    with pytest.raises(ImageReadError, match="too elongated"):
        load_image(png(h, w))
    with pytest.raises(ImageReadError, match="too elongated"):
        load_image(np.zeros((h, w, 3), np.uint8))


def test_shapes_within_the_ratio_and_tiny_images_are_read():
    assert load_image(png(1, 1)).shape == (1, 1, 3)
    assert load_image(png(2, 2 * MAX_ASPECT_RATIO)).shape == (2, 2 * MAX_ASPECT_RATIO, 3)


def test_a_huge_declared_png_is_refused_from_its_header():
    with pytest.raises(ImageReadError, match="too large|exceeds the limit"):
        load_image(png_declaring(200000, 200000))
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        load_image(png_declaring(12000, 9000))  # 108 MP: under PIL's own limit, over ours


def test_an_unreadable_path_is_an_image_read_error(tmp_path):
    with pytest.raises(ImageReadError):
        load_image(tmp_path / ("x" * 300 + ".png"))  # a name longer than the file system allows


# ---------------------------------------------------------------------------------------------
# writing: temp names stay short whatever the final name


def test_atomic_write_of_a_long_name(tmp_path):
    name = "n" * 250 + ".png"
    coco.atomic_write_bytes(tmp_path / name, b"x")
    assert (tmp_path / name).read_bytes() == b"x" and len(os.listdir(tmp_path)) == 1


def test_cli_prints_environment_errors_as_one_line(capsys, monkeypatch):
    from maskformer import __main__ as cli

    def boom(args):
        raise OSError(28, "No space left on device", "/data/out.png")

    monkeypatch.setattr("maskformer.commands.synth.run", boom)
    assert cli.main(["synth", "--out", "x"]) == 2
    assert capsys.readouterr().err == "error: disk full: cannot write /data/out.png\n"
    monkeypatch.setattr(
        "maskformer.commands.synth.run", lambda a: json.loads("[" * 100_000 + "]" * 100_000)
    )
    assert cli.main(["synth", "--out", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
