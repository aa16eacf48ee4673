"""Overlay rendering: colours, void left alone, boundaries, legend."""

import numpy as np

from maskformer.config import generic_meta
from maskformer.inference.visualize import (
    add_legend,
    jitter_color,
    render_instances,
    render_panoptic,
    render_semantic,
)

META = generic_meta(4, thing_ids=(0, 1))


def test_semantic_overlay_colours_and_legend():
    img = np.full((40, 60, 3), 100, np.uint8)
    sem = np.zeros((40, 60), np.int64)
    sem[:, 30:] = 2
    sem[:5, :5] = 255  # ignore: left as the image
    out = render_semantic(img, sem, META, alpha=1.0)
    assert out.shape[0] == 40 and out.shape[1] > 60  # legend panel on the right
    assert tuple(out[20, 10]) == META.colors[0] and tuple(out[20, 50]) == META.colors[2]
    assert tuple(out[1, 1]) == (100, 100, 100)
    assert (out[20, 29:31] == 255).all(axis=-1).any()  # white boundary between the classes
    bare = render_semantic(img, sem, META, legend=False)
    assert bare.shape == img.shape


def test_panoptic_overlay_void_and_things_jittered():
    img = np.zeros((20, 20, 3), np.uint8)
    ids = np.zeros((20, 20), np.int64)
    ids[:, :10] = 1
    ids[:, 10:] = 2
    ids[:3, :3] = 0
    segs = [
        {"id": 1, "category_id": 0, "isthing": True},
        {"id": 2, "category_id": 0, "isthing": True},
    ]
    out = render_panoptic(img, ids, segs, META, alpha=1.0, legend=False)
    assert tuple(out[1, 1]) == (0, 0, 0)  # void
    assert tuple(out[15, 5]) == jitter_color(META.colors[0], 1)
    assert tuple(out[15, 15]) == jitter_color(META.colors[0], 2)
    assert tuple(out[15, 5]) != tuple(out[15, 15])  # two instances of one class differ


def test_instances_below_threshold_not_drawn():
    img = np.zeros((10, 10, 3), np.uint8)
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :5] = True
    masks[1, 5:] = True
    out = render_instances(
        img, masks, [0, 1], [0.9, 0.2], META, score_threshold=0.5, alpha=1.0, legend=False
    )
    assert out[:4].any() and not out[6:].any()


def test_long_legend_is_cut():
    pic = np.zeros((30, 30, 3), np.uint8)
    out = add_legend(pic, [(f"class {i}", (i, i, i)) for i in range(100)], max_rows=5)
    assert out.shape[0] >= 30 and out.shape[1] > 30


def test_blend_by_bands_equals_the_whole_picture(monkeypatch):
    """Bands of rows (with their one-row halo) give the picture blended all at once."""
    import maskformer.inference.visualize as vis

    def whole(image, color_map, where, alpha=0.55):
        out = image.astype(np.float32)
        out[where] = (1 - alpha) * out[where] + alpha * color_map[where].astype(np.float32)
        out = out.round().clip(0, 255).astype(np.uint8)
        labels = color_map.astype(np.int64) @ np.array([1, 256, 65536])
        out[vis.region_borders(labels, where)] = 255
        return out

    rng = np.random.default_rng(0)
    for h, w in [(1, 9), (70, 3), (97, 131), (130, 66)]:
        img = rng.integers(0, 256, (h, w, 3), np.uint8)
        cells = rng.integers(0, 4, (h // 7 + 1, w // 7 + 1))
        color_map = rng.integers(0, 256, (4, 3), np.uint8)[
            np.kron(cells, np.ones((7, 7), int))[:h, :w]
        ]
        where = rng.random((h, w)) < 0.8
        for rows in (1, 2, 7, 256):
            monkeypatch.setattr(vis, "BAND_ROWS", rows)
            np.testing.assert_array_equal(
                vis.blend(img, color_map, where), whole(img, color_map, where)
            )
