"""load_image: every PIL mode, arrays, EXIF orientation, and every kind of bad input."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from maskformer.errors import ImageReadError
from maskformer.image_io import load_image


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h=12, w=20, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _check(a: np.ndarray, h: int, w: int) -> None:
    assert a.shape == (h, w, 3) and a.dtype == np.uint8 and a.flags.c_contiguous


@pytest.mark.parametrize("src_kind", ["path", "str", "bytes", "pil", "array"])
def test_rgb_sources_round_trip(tmp_path, src_kind):
    a = _rgb()
    path = tmp_path / "x.png"
    Image.fromarray(a).save(path)
    src = {
        "path": path,
        "str": str(path),
        "bytes": path.read_bytes(),
        "pil": Image.open(path),
        "array": a,
    }[src_kind]
    out = load_image(src)
    _check(out, 12, 20)
    np.testing.assert_array_equal(out, a)


def test_rgba_drops_alpha():
    a = np.dstack([_rgb(), np.zeros((12, 20), np.uint8)])  # fully transparent
    out = load_image(_encode(Image.fromarray(a, "RGBA")))
    np.testing.assert_array_equal(out, a[:, :, :3])


@pytest.mark.parametrize("mode", ["L", "LA", "1", "CMYK"])
def test_simple_modes_match_pil_convert(mode):
    im = Image.fromarray(_rgb()).convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = load_image(_encode(im, fmt))
    _check(out, 12, 20)
    np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))
    if mode in ("L", "LA", "1"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_palette_with_transparency_no_warning():
    im = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.info["transparency"] = 0
    data = _encode(im, transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when P+transparency goes straight to RGB
        out = load_image(data)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[:, :, :3]
    np.testing.assert_array_equal(out, expected)


def test_16bit_full_range_scaled_not_clipped():
    a16 = np.linspace(0, 65535, 12 * 20).reshape(12, 20).astype(np.uint16)
    im = Image.fromarray(a16)
    assert im.mode == "I;16"
    out = load_image(_encode(im))
    _check(out, 12, 20)
    np.testing.assert_array_equal(out[..., 0], np.rint(a16 / 257.0).astype(np.uint8))
    assert out.max() == 255 and out.min() == 0


def test_12bit_data_in_16bit_file_uses_its_bit_depth():
    a16 = np.full((4, 4), 4095, np.uint16)
    a16[0, 0] = 0
    out = load_image(_encode(Image.fromarray(a16)))
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 0


def test_16bit_holding_8bit_values_is_kept():
    a16 = np.arange(16, dtype=np.uint16).reshape(4, 4) * 10
    out = load_image(_encode(Image.fromarray(a16)))
    np.testing.assert_array_equal(out[..., 0], a16.astype(np.uint8))


def test_mode_I_and_F_tiff():
    ai = (np.arange(24, dtype=np.int32).reshape(4, 6) - 5) * 1000  # negative values: stretched
    out = load_image(_encode(Image.fromarray(ai), "TIFF"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    af = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    out = load_image(_encode(Image.fromarray(af), "TIFF"))
    np.testing.assert_array_equal(out[..., 0], np.rint(af * 255).astype(np.uint8))


def test_multiframe_gif_gives_first_frame():
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = load_image(data)
    _check(out, 8, 8)
    assert abs(int(out[0, 0, 0]) - 10) <= 2


def test_exif_orientation_applied():
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(im, "JPEG", exif=exif.tobytes(), quality=98)
    out = load_image(data)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    _check(out, 40, 20)
    np.testing.assert_array_equal(out, expected)
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # the left half went to the top


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((6, 5), np.uint8),
        ((6, 5, 1), np.uint8),
        ((6, 5, 4), np.uint8),
        ((6, 5, 3), np.float32),
        ((6, 5), np.bool_),
        ((6, 5, 3), np.uint16),
    ],
)
def test_arrays(shape, dtype):
    a = np.random.default_rng(0).random(shape)
    a = (
        (a > 0.5)
        if dtype == np.bool_
        else (a * (65535 if dtype == np.uint16 else 1 if dtype == np.float32 else 255)).astype(
            dtype
        )
    )
    out = load_image(a)
    _check(out, 6, 5)
    if dtype == np.uint8 and len(shape) == 3 and shape[2] == 4:
        np.testing.assert_array_equal(out, a[:, :, :3])
    if dtype == np.float32:
        np.testing.assert_array_equal(out, np.rint(a * 255).astype(np.uint8))


def test_bad_array_shape():
    with pytest.raises(ImageReadError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageReadError, match="no pixels"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def test_missing_empty_directory_text(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.png.*does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg.*empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match=r"notes\.png.*not a recognised image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageReadError, match="int"):
        load_image(42)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(tmp_path, fmt):
    data = _encode(Image.fromarray(_rgb(64, 64)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.\w+.*truncated"):
        load_image(path)


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with one tiny IDAT chunk (about 60 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return (
            struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("w,h", [(11_000, 10_000), (100_000, 100_000)])
def test_decompression_bomb_refused_without_pil_warning(tmp_path, w, h):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(w, h))
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError, match=r"bomb\.png.*(too large|exceeds)"):
            load_image(path)
    assert not [c for c in caught if issubclass(c.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's global is never touched


def test_pixel_limit_is_configurable():
    data = _encode(Image.fromarray(_rgb(30, 40)))
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        load_image(data, max_pixels=1000)
    _check(load_image(data, max_pixels=1200), 30, 40)
    _check(load_image(data, max_pixels=None), 30, 40)
