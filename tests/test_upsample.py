"""LazyMasks: the official two-stage bilinear resize, computed by blocks, against F.interpolate.

The reference is ``postprocess.resize_mask_logits`` (two ``F.interpolate`` calls and a crop), as the
full-size path computed it. On x86-64 (AVX-512, AVX2 and the default kernels, checked with
``ATEN_CPU_CAPABILITY``) every value is bit-identical; the margin asserted everywhere is far inside
what would change a decision.
"""

import platform

import pytest
import torch

from maskformer.inference.postprocess import resize_maps, resize_mask_logits
from maskformer.inference.upsample import full_size_masks, linear_axis

X86 = platform.machine() in ("x86_64", "AMD64")

# (padded, image inside it, original): crops, odd sizes, up and down, identity stage 2, tiny maps
# (H + W <= 128: F.interpolate's other kernel, materialised), a small stage 1 (materialised).
SIZES = [
    ((64, 64), (64, 64), (64, 64)),
    ((128, 192), (128, 171), (601, 803)),
    ((128, 192), (128, 171), (90, 120)),
    ((96, 128), (90, 121), (45, 61)),
    ((32, 32), (30, 28), (170, 165)),
    ((224, 320), (200, 313), (200, 313)),
    ((96, 96), (96, 90), (401, 377)),
    ((160, 224), (157, 211), (157, 400)),
]


def _logits(q, padded, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, padded[0] // 4, padded[1] // 4, generator=g) * 6  # (Q, Hp/4, Wp/4)


def _close(got, ref):
    """Within 1e-6 of the largest value (rounding of four fused steps is ~1e-7); on x86-64, equal."""
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-6 * ref.abs().max() + 1e-12
    if X86:
        assert torch.equal(got, ref)


def test_axis_is_pytorchs():
    ax = linear_axis(5, 12)
    eye = torch.eye(5)[None]  # (1, 5, 5): column j interpolates unit vector j
    ref = torch.nn.functional.interpolate(
        eye[None], size=(5, 12), mode="bilinear", align_corners=False
    )[0, 0]  # (5, 12): rows unchanged, columns resized
    weights = torch.zeros(12, 5)
    weights[torch.arange(12), ax.i0] += ax.w0
    weights[torch.arange(12), ax.i1] += ax.w1
    torch.testing.assert_close(weights.T, ref, rtol=0, atol=1e-7)
    assert linear_axis(7, 7).identity


@pytest.mark.parametrize("padded,image,out", SIZES)
def test_full_blocks_and_points_equal_f_interpolate(padded, image, out):
    low = _logits(5, padded)
    ref = resize_mask_logits(low, padded, image, out)  # (Q, H0, W0)
    m = full_size_masks(low, padded, image, out)
    assert m.shape == ref.shape
    _close(m.full(), ref)
    g = torch.Generator().manual_seed(1)
    qs = torch.tensor([3, 0])
    cols = torch.randperm(out[1], generator=g)[:17].sort().values
    y0 = out[0] // 3
    y1 = min(out[0], y0 + 9)
    _close(m.values(qs, (y0, y1), cols), ref[qs][:, y0:y1][:, :, cols])
    _close(m.values(qs, (0, 1), slice(2, out[1] - 1)), ref[qs][:, :1, 2 : out[1] - 1])
    ys = torch.randint(0, out[0], (40,), generator=g)
    xs = torch.randint(0, out[1], (40,), generator=g)
    _close(m.points(torch.arange(5), ys, xs), ref[:, ys, xs])
    _close(m.at(torch.arange(40) % 5, ys, xs), ref[torch.arange(40) % 5, ys, xs])


@pytest.mark.parametrize("padded,image,out", SIZES)
def test_semantic_only_order_sigmoid_between_the_stages(padded, image, out):
    low = _logits(4, padded, seed=2)
    ref = resize_maps(resize_mask_logits(low, padded, image, image).sigmoid(), out)
    m = full_size_masks(low, padded, image, out, probs_between=True)
    assert m.values_are_probs
    # sigmoid's vector and scalar code paths may differ by an ulp: compare with a margin
    torch.testing.assert_close(m.full(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(m.probs(torch.tensor([1]), (0, 2), slice(None)), ref[1:2, :2])


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("padded,image,out", SIZES)
def test_tile_bounds_hold_every_value(padded, image, out, probs):
    low = _logits(6, padded, seed=3)
    m = full_size_masks(low, padded, image, out, probs_between=probs)
    full, grid = m.full(), m.grid
    plo, phi = grid.prob_bounds
    values = full if probs else full.sigmoid()
    rows, cols = grid.row_edges, grid.col_edges
    assert rows[0] == cols[0] == 0 and rows[-1] == out[0] and cols[-1] == out[1]
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            tile = full[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].reshape(6, -1)
            assert (tile.amin(1) >= grid.lo[:, i, j]).all() and (
                tile.amax(1) <= grid.hi[:, i, j]
            ).all()
            p = values[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].reshape(6, -1)
            assert (p.amin(1) >= plo[:, i, j]).all() and (p.amax(1) <= phi[:, i, j]).all()
            if not probs:  # a bound keeps its sign: no positive value under a bound <= 0
                assert not (tile > 0)[grid.hi[:, i, j] <= 0].any()


def test_stage_one_map_bounds_finer_tiles_than_the_source():
    """A big upsampling bounds tiles from the (small) stage-1 map: tiles of ~23 px, not ~94 px."""
    m = full_size_masks(_logits(3, (128, 192)), (128, 192), (128, 171), (3000, 4000))
    assert m.grid.lo.shape == (3, 128, 171)
    small = full_size_masks(_logits(3, (64, 64)), (64, 64), (64, 64), (64, 64))
    assert small.grid.lo.shape[1:] == (4, 4)  # 16-px tiles on a source at the output size
