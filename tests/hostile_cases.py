"""The hostile-input suite: files and values a hostile user (or a broken tool) hands the project.

Each ``Case`` writes its input under a folder of its own and names the entry point it attacks:

- ``import``: the import command into a workspace (``python -m app import``; the app's
  Import button runs the same code in a child process, ``app.safe_import``),
- ``predict`` / ``evaluate`` / ``train``: those commands of ``python -m maskformer``,
- ``name``: a category name given to the workspace,
- ``server-path``: the app's "import from a server path" with an import root,
- ``upload``: the app's upload of files / archives.

``expect`` is what handling it cleanly means: ``refused`` (one ``error: ...`` line, exit 2, the
workspace unchanged), ``accepted`` (exit 0), or ``either`` (both are fine as long as it is clean).
Every run is judged by ``tests/hostile_driver.py``; ``tests/test_hostile_inputs.py`` asserts
they are all handled cleanly, and ``bench/hostile.py`` prints the tally. Add a case here for every
new kind of hostile input (checkpoints: ``kind="checkpoint"``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

H, W = 40, 50  # every generated image


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # image | filename | coco | panoptic | semantic | results | json | names | ...
    command: str  # import | predict | evaluate | train | name | server-path | upload
    make: Callable[[Path], Any]  # writes the input under a fresh folder, returns the source
    expect: str = "refused"  # refused | accepted | either | outside (refused, one fixed answer)


# ------------------------------------------------------------------------------------ bytes


def png(h: int = H, w: int = W, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (8-bit RGB); ``body`` is its IDAT data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", body or zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def bomb_png() -> bytes:
    """20000 x 20000 of zeros, compressed: 400 MP (1.2 GB decoded) in ~400 KB."""
    row = b"\x00" + b"\x00" * (20000 * 3)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(20000)) + z.flush()
    return png_declaring(20000, 20000, body)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small valid JPEG, then its SOF0 size rewritten (the decoder fills the rest grey)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def write(folder: Path, name: str, data: bytes) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


# ------------------------------------------------------------------------------------ datasets


def square(x0: float = 5, y0: float = 5, x1: float = 20, y1: float = 25) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def instances(
    folder: Path,
    *,
    segmentation: Any = None,
    image: dict | None = None,
    categories: Any = None,
    extra_anns: list | None = None,
    raw: str | None = None,
) -> Path:
    """A COCO instances dataset: ``instances.json`` + ``images/im.png`` (40 x 50), one square."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "images" / "im.png").write_bytes(png())
    im = {"id": 1, "file_name": "im.png", "height": H, "width": W, **(image or {})}
    ann = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": [square()] if segmentation is None else segmentation,
    }
    cats = categories if categories is not None else [{"id": 1, "name": "thing", "isthing": 1}]
    data = {"images": [im], "annotations": [ann, *(extra_anns or [])], "categories": cats}
    text = raw if raw is not None else json.dumps(data)
    (folder / "instances.json").write_text(text)
    return folder / "instances.json"


def panoptic(
    folder: Path,
    *,
    id_map: np.ndarray | None = None,
    segments: Any = None,
    png_name: str = "im.png",
    png_data: bytes | None = None,
    categories: Any = None,
) -> Path:
    """A COCO panoptic dataset (the synth layout): panoptic.json, panoptic/, images/."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "panoptic").mkdir(exist_ok=True)
    (folder / "images" / "im.png").write_bytes(png())
    if id_map is None:
        id_map = np.zeros((H, W), np.int64)
        id_map[5:20, 5:25] = 1
    rgb = np.stack([(id_map >> (8 * c)) & 255 for c in range(3)], -1).astype(np.uint8)
    if png_data is None:
        png_data = encode(Image.fromarray(rgb), "PNG")
    (folder / "panoptic" / "im.png").write_bytes(png_data)
    segs = segments if segments is not None else [{"id": 1, "category_id": 1, "iscrowd": 0}]
    data = {
        "images": [{"id": 1, "file_name": "im.png", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "file_name": png_name, "segments_info": segs}],
        "categories": categories or [{"id": 1, "name": "thing", "isthing": 1}],
    }
    (folder / "panoptic.json").write_text(json.dumps(data))
    return folder


def semantic(folder: Path, labels: np.ndarray | None = None, mode: str = "L") -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "images" / "a.png").write_bytes(png())
    lab = np.zeros((H, W), np.uint8) if labels is None else labels
    im = Image.fromarray(lab).convert(mode) if mode != "L" else Image.fromarray(lab)
    im.save(folder / "annotations" / "a.png")
    (folder / "classes.txt").write_text("a\nb\n")
    return folder


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_coco(depth: int) -> str:
    return '{"images": [], "annotations": ' + nested(depth) + ', "categories": []}'


def results(folder: Path, segmentation: Any = None, raw: str | None = None) -> Path:
    """Instance results for the ``GOOD`` dataset (image 1), one result."""
    r = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": segmentation}]
    p = folder / "results.json"
    folder.mkdir(parents=True, exist_ok=True)
    p.write_text(raw if raw is not None else json.dumps(r))
    return p


def zip_of(folder: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "upload.zip"
    with zipfile.ZipFile(p, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0  # a symlink entry
            zf.writestr(info, target)
    return p


def zip_bomb(folder: Path) -> Path:
    """A zip whose central directory declares a 5 GiB member (its data is 1 KiB: zipfile stops
    a member at its declared size, so declared sizes are what an unpacker must bound)."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "bomb.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\x00" * 1024)
        zf.filelist[0].file_size = 5 << 30  # written into the central directory on close
    return p


def symlink(folder: Path, name: str, target: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    os.symlink(target, p)
    return p


# ------------------------------------------------------------------------------------ the cases

CASES: list[Case] = []


def case(name: str, kind: str, command: str, expect: str = "refused"):
    def add(make: Callable[[Path], Any]) -> Callable[[Path], Any]:
        CASES.append(Case(name, kind, command, make, expect))
        return make

    return add


def _image_case(name: str, data: Callable[[], bytes], fname: str, expect: str) -> None:
    case(f"image: {name}", "image", "import", expect)(lambda d: write(d, fname, data()))
    case(f"predict: {name}", "image", "predict", expect)(lambda d: write(d, fname, data()))


_rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
for _name, _data, _fname, _expect in [
    ("empty file", lambda: b"", "empty.png", "refused"),
    ("text named .png", lambda: b"hello, not an image", "text.png", "refused"),
    ("truncated PNG", lambda: png()[:200], "trunc.png", "refused"),
    ("truncated JPEG", lambda: encode(Image.fromarray(_rgb), "JPEG")[:300], "trunc.jpg", "refused"),
    ("PNG declaring 200000x200000", lambda: png_declaring(200000, 200000), "huge.png", "refused"),
    ("PNG bomb 20000x20000 (400 MP)", bomb_png, "bomb.png", "refused"),
    ("JPEG declaring 60000x60000", lambda: jpeg_declaring(60000, 60000), "huge.jpg", "refused"),
    ("1x4000 strip", lambda: png(1, 4000), "strip.png", "refused"),
    ("4000x1 strip", lambda: png(4000, 1), "column.png", "refused"),
    ("1x1 pixel", lambda: png(1, 1), "dot.png", "accepted"),
    (
        "16-bit grey PNG",
        lambda: encode(Image.fromarray(np.arange(H * W, dtype=np.uint16).reshape(H, W)), "PNG"),
        "deep.png",
        "accepted",
    ),
    (
        "palette PNG with transparency",
        lambda: encode(Image.fromarray(_rgb).convert("P"), "PNG", transparency=0),
        "pal.png",
        "accepted",
    ),
    (
        "CMYK JPEG",
        lambda: encode(Image.fromarray(_rgb).convert("CMYK"), "JPEG"),
        "cmyk.jpg",
        "accepted",
    ),
    (
        "float TIFF with NaN",
        lambda: encode(Image.fromarray(np.full((H, W), np.nan, np.float32)), "TIFF"),
        "nan.tif",
        "accepted",
    ),
    ("garbage WebP", lambda: b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 40, "bad.webp", "refused"),
    ("GIF, two frames", lambda: _gif(), "anim.gif", "accepted"),
    ("broken EXIF", lambda: _broken_exif(), "exif.jpg", "accepted"),
]:
    _image_case(_name, _data, _fname, _expect)


def _gif() -> bytes:
    frames = [Image.fromarray(_rgb), Image.fromarray(255 - _rgb)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _broken_exif() -> bytes:
    data = encode(Image.fromarray(_rgb), "JPEG")
    app1 = b"\xff\xe1" + struct.pack(">H", 20) + b"Exif\x00\x00MM\x00*\xff\xff\xff\xff\x00\x00"
    return data[:2] + app1 + data[2:]


# file names
_LONG = "n" * 246 + ".png"  # 250 bytes
case("file name of 250 bytes", "filename", "import", "accepted")(lambda d: write(d, _LONG, png()))
case("file name of 250 bytes", "filename", "predict", "accepted")(lambda d: write(d, _LONG, png()))
case("file name with newline and ESC", "filename", "import", "accepted")(
    lambda d: write(d, "a\nb\x1b[31m.png", png())
)
case("file name with HTML", "filename", "import", "accepted")(
    lambda d: write(d, "<img src=x onerror=alert(1)>.png", png())
)
case("file name of 250 UTF-8 bytes", "filename", "predict", "accepted")(
    lambda d: write(d, "é" * 123 + ".png", png())
)


@case("folder with a symlink to /etc/passwd named x.png", "filename", "import", "either")
def _(d: Path) -> Path:
    (d / "imgs").mkdir(parents=True)
    (d / "imgs" / "ok.png").write_bytes(png())
    os.symlink("/etc/passwd", d / "imgs" / "x.png")
    return d / "imgs"


@case("folder with a symlink loop", "filename", "import", "accepted")
def _(d: Path) -> Path:
    (d / "imgs").mkdir(parents=True)
    (d / "imgs" / "ok.png").write_bytes(png())
    os.symlink(d / "imgs", d / "imgs" / "loop")
    return d / "imgs"


# COCO instances: geometry
for _name, _seg, _expect in [
    ("polygon at +1e9", [[0, 0, 1e9, 0, 1e9, 1e9]], "refused"),
    ("polygon at -1e9", [[-1e9, 0, 5, 0, 5, 5]], "refused"),
    ("polygon at 1e300", [[0, 0, 1e300, 0, 5, 5]], "refused"),
    ("polygon with 5 coordinates", [[1, 2, 3, 4, 5]], "refused"),
    ("polygon of strings", [["a", "b", "c", "d", "e", "f"]], "refused"),
    ("polygon of booleans", [[True, False, True, True, False, True]], "refused"),
    ("polygon half a pixel past the border", [[0, 0, W + 0.5, 0, W + 0.5, H + 0.5]], "accepted"),
    ("empty polygon list", [], "accepted"),
    ("segmentation is a number", 7, "refused"),
    ("segmentation is a string", "abc", "refused"),
    ("RLE counts adding up to less than h*w", {"size": [H, W], "counts": "0j1"}, "refused"),
    (
        "RLE counts adding up to more than h*w",
        {"size": [H, W], "counts": [0, H * W + 5]},
        "refused",
    ),
    ("RLE of garbage bytes", {"size": [H, W], "counts": "\u00ff\u00fe garbage"}, "refused"),
    ("RLE with a non-ASCII character", {"size": [H, W], "counts": "é"}, "refused"),
    ("RLE ending inside a number", {"size": [H, W], "counts": "o"}, "refused"),
    ("RLE with a negative run", {"size": [H, W], "counts": [H * W + 5, -5]}, "refused"),
    ("RLE of one run of 1e9", {"size": [H, W], "counts": [1000000000]}, "refused"),
    ("RLE size not the image's", {"size": [10, 10], "counts": [100]}, "refused"),
    ("RLE size 200000x200000", {"size": [200000, 200000], "counts": [4 * 10**10]}, "refused"),
    ("RLE counts as an object", {"size": [H, W], "counts": {"a": 1}}, "refused"),
    ("RLE without counts", {"size": [H, W]}, "refused"),
    ("valid uncompressed RLE", {"size": [H, W], "counts": [100, 200, H * W - 300]}, "accepted"),
]:
    case(f"COCO: {_name}", "coco", "import", _expect)(
        lambda d, s=_seg: instances(d, segmentation=s)
    )
case("COCO: polygon NaN (JSON NaN)", "coco", "import")(
    lambda d: instances(d, raw=json.dumps(_inst_dict([[0, 0, float("nan"), 0, 5, 5]])))
)
case("COCO: polygon Infinity", "coco", "import")(
    lambda d: instances(d, raw=json.dumps(_inst_dict([[0, 0, float("inf"), 0, 5, 5]])))
)


def _inst_dict(seg: Any) -> dict:
    return {
        "images": [{"id": 1, "file_name": "im.png", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg}],
        "categories": [{"id": 1, "name": "thing"}],
    }


# COCO instances: declared sizes
for _name, _image in [
    ("image declared 200000x200000", {"height": 200000, "width": 200000}),
    ("image declared one pixel taller", {"height": H + 1}),
    ("image declared with negative height", {"height": -40}),
    ("image declared 0 wide", {"width": 0}),
    ("image size as strings", {"height": "40", "width": "50"}),
    ("image size as floats", {"height": 40.0, "width": 50.0}),
]:
    case(f"COCO: {_name}", "coco", "import")(lambda d, im=_image: instances(d, image=im))

# COCO: files outside the dataset
case("COCO: file_name absolute (/etc/passwd)", "coco", "import")(
    lambda d: instances(d, image={"file_name": "/etc/passwd"})
)


@case("COCO: file_name climbing out (../../outside.png)", "coco", "import")
def _(d: Path) -> Path:
    (d / "outside.png").write_bytes(png(seed=9))
    return instances(d / "a" / "b", image={"file_name": "../../../outside.png"})


@case("COCO: file_name a symlink to outside", "coco", "import")
def _(d: Path) -> Path:
    (d / "outside.png").write_bytes(png(seed=9))
    p = instances(d / "ds", image={"file_name": "link.png"})
    os.symlink(d / "outside.png", d / "ds" / "images" / "link.png")
    return p


case("COCO: file_name with a NUL byte", "coco", "import")(
    lambda d: instances(d, image={"file_name": "im.png\x00.jpg"})
)
case("COCO: file_name of 10000 characters", "coco", "import")(
    lambda d: instances(d, image={"file_name": "x" * 10000 + ".png"})
)

# COCO: categories and structure
case("COCO: two categories named sky (stuff and thing)", "coco", "import")(
    lambda d: instances(
        d,
        categories=[
            {"id": 1, "name": "sky", "isthing": 0},
            {"id": 2, "name": "sky", "isthing": 1},
        ],
    )
)
case("COCO: category names differing by a space", "coco", "import")(
    lambda d: instances(d, categories=[{"id": 1, "name": "sky"}, {"id": 2, "name": "sky "}])
)
case("COCO: a category name of 1 MB", "names", "import")(
    lambda d: instances(d, categories=[{"id": 1, "name": "x" * (1 << 20)}])
)
case("COCO: a category name with a newline", "names", "import")(
    lambda d: instances(d, categories=[{"id": 1, "name": "a\nb"}])
)
case("COCO: a category name of HTML", "names", "import", "accepted")(
    lambda d: instances(d, categories=[{"id": 1, "name": "<b onmouseover=alert(1)>x</b>"}])
)
case("COCO: category id a string", "coco", "import")(
    lambda d: instances(d, categories=[{"id": "1", "name": "a"}])
)
case("COCO: no categories", "coco", "import")(lambda d: instances(d, categories=[]))
case("COCO: category_id not in categories", "coco", "import")(
    lambda d: instances(d, extra_anns=[{"image_id": 1, "category_id": 9, "segmentation": []}])
)
case("COCO: annotation of a missing image", "coco", "import")(
    lambda d: instances(d, extra_anns=[{"image_id": 7, "category_id": 1, "segmentation": []}])
)
case("COCO: iscrowd 5", "coco", "import")(
    lambda d: instances(
        d, extra_anns=[{"image_id": 1, "category_id": 1, "segmentation": [], "iscrowd": 5}]
    )
)
case("COCO: image id 10^30", "coco", "import", "either")(
    lambda d: instances(
        d,
        raw=json.dumps(_inst_dict([square()])).replace(
            '"id": 1, "file', '"id": 1' + "0" * 30 + ', "file'
        ),
    )
)
case("JSON: top level a list", "json", "import")(lambda d: instances(d, raw="[1, 2, 3]"))
case("JSON: nested 100000 deep", "json", "import")(lambda d: instances(d, raw=nested_coco(100000)))
case("JSON: an integer of 5000 digits", "json", "import")(
    lambda d: instances(
        d, raw='{"images": [], "annotations": [], "categories": [{"id": ' + "9" * 5000 + "}]}"
    )
)
case("JSON: truncated", "json", "import")(lambda d: instances(d, raw='{"images": [1, 2'))
case("JSON: UTF-16 bytes", "json", "import")(
    lambda d: _raw(d / "instances.json", json.dumps(_inst_dict([square()])).encode("utf-16"))
)
case("JSON: binary garbage", "json", "import")(lambda d: _raw(d / "x.json", os.urandom(2000)))


def _raw(p: Path, data: bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


# COCO panoptic
_ids = np.zeros((H, W), np.int64)
_ids[5:20, 5:25] = 1
_ids[25:30, 5:10] = 2
case("panoptic: a PNG id without segments_info", "panoptic", "import", "either")(
    lambda d: panoptic(d, id_map=_ids)
)
case("panoptic: segment id 2^30", "panoptic", "import")(
    lambda d: panoptic(d, segments=[{"id": 1 << 30, "category_id": 1}])
)
case("panoptic: duplicate segment ids", "panoptic", "import")(
    lambda d: panoptic(d, segments=[{"id": 1, "category_id": 1}, {"id": 1, "category_id": 1}])
)
case("panoptic: segments_info not a list", "panoptic", "import")(
    lambda d: panoptic(d, segments={"id": 1})
)
case("panoptic: PNG of another size", "panoptic", "import")(
    lambda d: panoptic(d, id_map=np.ones((H + 3, W), np.int64))
)
case("panoptic: PNG declaring 200000x200000", "panoptic", "import")(
    lambda d: panoptic(d, png_data=png_declaring(200000, 200000))
)
case("panoptic: PNG is text", "panoptic", "import")(lambda d: panoptic(d, png_data=b"nope"))
case("panoptic: PNG file_name climbing out", "panoptic", "import")(
    lambda d: panoptic(d / "ds", png_name="../../../etc/hostname")
)
case("panoptic: PNG file_name absolute", "panoptic", "import")(
    lambda d: panoptic(d, png_name="/etc/hostname")
)
case("panoptic: two categories of one name", "panoptic", "import")(
    lambda d: panoptic(
        d, categories=[{"id": 1, "name": "sky", "isthing": 0}, {"id": 2, "name": "sky"}]
    )
)

# semantic folders (train reads them; import takes COCO only, so these go to train)
case("semantic: label out of range", "semantic", "train")(
    lambda d: semantic(d, np.full((H, W), 7, np.uint8))
)
case("semantic: RGB label image", "semantic", "train")(lambda d: semantic(d, mode="RGB"))


@case("semantic: a label symlinked to outside", "semantic", "train")
def _(d: Path) -> Path:
    root = semantic(d / "ds")
    (root / "annotations" / "a.png").unlink()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(d / "outside.png")
    os.symlink(d / "outside.png", root / "annotations" / "a.png")
    return root


# train on hostile COCO: refused before the first step
case("train: JSON nested 100000 deep", "json", "train")(
    lambda d: instances(d, raw=nested_coco(100000))
)
case("train: polygon at 1e9", "coco", "train")(
    lambda d: instances(d, segmentation=[[0, 0, 1e9, 0, 1e9, 1e9]])
)
case("train: file_name climbing out", "coco", "train")(
    lambda d: instances(d / "a", image={"file_name": "../../etc/hostname"})
)
case("train: image declared 200000x200000", "coco", "train")(
    lambda d: instances(d, image={"height": 200000, "width": 200000})
)

# evaluate --predictions: hostile result files against a good dataset
for _name, _seg in [
    ("RLE of garbage bytes", {"size": [H, W], "counts": "\u00ff\u00fe garbage"}),
    ("RLE with a non-ASCII character", {"size": [H, W], "counts": "é"}),
    ("RLE counts not adding up", {"size": [H, W], "counts": "0j1"}),
    ("RLE size 200000x200000", {"size": [200000, 200000], "counts": [4 * 10**10]}),
    ("polygon at 1e9", [[0, 0, 1e9, 0, 1e9, 1e9]]),
    ("segmentation a number", 5),
]:
    case(f"evaluate: {_name}", "results", "evaluate")(lambda d, s=_seg: results(d, s))
case("evaluate: results nested 100000 deep", "json", "evaluate")(
    lambda d: results(d, raw=nested(100000))
)
case("evaluate: results a number", "json", "evaluate")(lambda d: results(d, raw="42"))
case("evaluate: results of strings", "results", "evaluate")(lambda d: results(d, raw='["a"]'))
case("evaluate: a result without segmentation", "results", "evaluate")(
    lambda d: results(d, raw='[{"image_id": 1, "category_id": 1}]')
)
case("evaluate: a valid result", "results", "evaluate", "accepted")(
    lambda d: results(d, {"size": [H, W], "counts": [100, 200, H * W - 300]})
)

# names given to the workspace
for _name, _value, _expect in [
    ("1 MB", "x" * (1 << 20), "refused"),
    ("101 characters", "y" * 101, "refused"),
    ("empty", "   ", "refused"),
    ("a newline", "a\nb", "refused"),
    ("a NUL byte", "a\x00b", "refused"),
    ("right-to-left override", "abc\u202edef", "refused"),
    ("HTML", "<script>alert(1)</script>", "accepted"),
    ("100 characters", "z" * 100, "accepted"),
    ("unicode", "ciel bleu 空", "accepted"),
]:
    case(f"category name: {_name}", "names", "name", _expect)(lambda d, v=_value: v)


# server paths (the import root is <case folder>/root; "outside" exists next to it)
def _server(d: Path, rel: str) -> str:
    (d / "root" / "imgs").mkdir(parents=True, exist_ok=True)
    (d / "root" / "imgs" / "a.png").write_bytes(png())
    (d / "outside" / "imgs").mkdir(parents=True, exist_ok=True)
    (d / "outside" / "imgs" / "b.png").write_bytes(png(seed=4))
    if not (d / "root" / "link").exists():
        os.symlink(d / "outside", d / "root" / "link")
    return rel.format(d=d)


for _name, _rel, _expect in [
    ("an existing folder outside the root", "{d}/outside/imgs", "outside"),
    ("a missing folder outside the root", "{d}/nowhere/imgs", "outside"),
    ("/etc", "/etc", "outside"),
    ("/etc/shadow", "/etc/shadow", "outside"),
    ("climbing out with ..", "imgs/../../outside/imgs", "outside"),
    ("a symlink inside the root to outside", "link/imgs", "outside"),
    ("a NUL byte", "imgs\x00/a.png", "outside"),
    ("a name of 5000 characters", "x" * 5000, "refused"),
    ("a relative folder inside the root", "imgs", "accepted"),
    ("an absolute folder inside the root", "{d}/root/imgs", "accepted"),
]:
    case(f"server path: {_name}", "server-path", "server-path", _expect)(
        lambda d, r=_rel: _server(d, r)
    )

# uploads: archives
case("zip: a member climbing out (../../evil.png)", "archive", "upload")(
    lambda d: zip_of(d, {"../../evil.png": png()})
)
case("zip: an absolute member (/tmp/evil.png)", "archive", "upload")(
    lambda d: zip_of(d, {"/tmp/evil.png": png()})
)
case("zip: a symlink member", "archive", "upload")(
    lambda d: zip_of(d, {"a.png": png()}, links={"passwd.png": "/etc/passwd"})
)
case("zip: 5 GiB of zeros", "archive", "upload")(zip_bomb)
case("zip: not a zip", "archive", "upload")(lambda d: write(d, "x.zip", b"PK\x03\x04 garbage"))
case("zip: of images", "archive", "upload", "accepted")(
    lambda d: zip_of(d, {"a.png": png(), "sub/b.png": png(seed=3)})
)


@case("zip: a COCO dataset with a polygon at 1e9", "archive", "upload")
def _(d: Path) -> Path:
    instances(d / "ds", segmentation=[[0, 0, 1e9, 0, 1e9, 1e9]])
    files = {
        str(p.relative_to(d / "ds")): p.read_bytes() for p in (d / "ds").rglob("*") if p.is_file()
    }
    return zip_of(d / "zip", files)


@case("zip: a valid COCO dataset", "archive", "upload", "accepted")
def _(d: Path) -> Path:
    instances(d / "ds")
    files = {
        str(p.relative_to(d / "ds")): p.read_bytes() for p in (d / "ds").rglob("*") if p.is_file()
    }
    return zip_of(d / "zip", files)


case("upload: a crashing COCO JSON among images", "archive", "upload")(
    lambda d: instances(d, segmentation=[[0, 0, 1e9, 0, 1e9, 1e9]])
)
