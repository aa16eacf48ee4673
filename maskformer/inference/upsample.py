"""Full-size mask logits on demand: PyTorch's bilinear resize reproduced exactly, block by block.

The official post-processing brings the stride-4 mask logits to the original image size with
``F.interpolate`` (bilinear, ``align_corners=False``) in two stages: to the padded network input,
crop the padding, then to the original size. A 48 MP photo makes that Q x 48M floats (19 GB for
100 queries). ``LazyMasks`` keeps the small logits and computes any block of rows and columns of
the full-size result for any queries, with the same arithmetic as PyTorch's CPU kernel, so every
value equals the one ``F.interpolate`` gives (tested bit for bit on AVX-512, AVX2 and the default
kernels). ``TileGrid`` bounds every tile of the result from the small logits alone, so callers can
skip the tiles whose outcome the bounds already decide.

How the kernel computes (``aten/src/ATen/native/cpu/UpSampleKernel.cpp``, generic N-d path): output
index i reads source ``src = scale * (i + 0.5) - 0.5`` (clamped at 0; ``scale = in / out`` in
float32), neighbours ``floor(src)`` and the next one (the last repeats), weights ``1 - l`` and ``l``;
a pixel is ``t0 * h0 + t1 * h1`` over rows of ``a * w0 + b * w1`` over columns. Where the kernels
are compiled with fused multiply-add (AVX2, AVX-512) each ``x * w + y`` is one fma; ``torch.addcmul``
is fused exactly where they are, so using it for those steps matches the kernel on every build.
Outputs with ``H + W <= 128`` go through another kernel: those (tiny) maps are materialised with
``F.interpolate`` itself.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

# F.interpolate takes another kernel (other rounding) for outputs this small: materialise those.
SMALL_OUTPUT = 128
# Relative margin on tile bounds: a pixel is four fused steps of convex weights (each within a few
# float32 ulps, 6e-8 relative) away from the source values, so 1e-5 is far outside rounding.
BOUND_MARGIN = 1e-5
TILE_PIXELS = 16  # target tile side in output pixels (at least one source cell)
BAND_PIXELS = 1 << 15  # tile rows are computed together up to this many pixels (64 rows of 512)
CHUNK_VALUES = 1 << 22  # values per computed block: temporaries stay at tens of MB
GROUP_ROWS = 6  # output rows per source-row pair from which broadcasting beats gathering
POINT_COST = 40  # a value computed alone costs about this many values computed in a block
GRID_VALUES = (
    1 << 22
)  # a stage-1 map up to this many values bounds the tiles (finer than the source)
BLOCK_COST = 1 << 16  # a block's fixed cost (tens of tensor operations) in values computed


@dataclass(frozen=True)
class Axis:
    """One 1-D linear resize: output i reads sources ``i0[i]``, ``i1[i]`` with weights ``w0``, ``w1``."""

    i0: Tensor  # (n,) int64
    i1: Tensor  # (n,) int64
    w0: Tensor  # (n,) float32
    w1: Tensor  # (n,) float32
    identity: bool  # same size in and out: output i is source i

    def __len__(self) -> int:
        return int(self.i0.numel())

    def take(self, sel: slice | Tensor) -> Axis:
        return Axis(self.i0[sel], self.i1[sel], self.w0[sel], self.w1[sel], self.identity)


@functools.lru_cache(maxsize=64)
def linear_axis(size_in: int, size_out: int) -> Axis:
    """PyTorch's source indices and weights for a linear resize ``size_in -> size_out``."""
    out = torch.arange(size_out)
    if size_in == size_out:
        return Axis(out, out, torch.ones(size_out), torch.zeros(size_out), True)
    scale = torch.tensor(float(size_in)) / torch.tensor(float(size_out))  # float32, as the kernel
    centres = out.float().add_(0.5)
    src = torch.addcmul(torch.full_like(centres, -0.5), centres, scale.expand_as(centres))
    src.clamp_(min=0)
    i0 = src.floor().long().clamp_(max=size_in - 1)
    w1 = (src - i0.float()).clamp_(0, 1)
    i1 = torch.where(i0 < size_in - 1, i0 + 1, i0)
    return Axis(i0, i1, 1 - w1, w1, False)


def _lerp(a: Tensor, b: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """``a * wa + b * wb`` as the kernel rounds it (``b *= wb`` in place, then one fused step)."""
    return b.mul_(wb).addcmul_(a, wa)


def _take_cols(x: Tensor, idx: Tensor) -> Tensor:
    """``x.index_select(2, idx)`` of an (n, R, C) block, as a gather along dim 1 of the (n R, C)
    view (about 3x faster than along dim 2 of the 3-d tensor on the CPU)."""
    n, r, c = x.shape
    return x.reshape(n * r, c).index_select(1, idx).view(n, r, len(idx))


def _take_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x.index_select(1, idx)`` of an (n, R, C) block, as whole-row copies from the (n R, C)
    view."""
    n, r, c = x.shape
    flat = (torch.arange(n)[:, None] * r + idx).view(-1)  # (n nr,) row of (i, idx[j])
    return x.reshape(n * r, c).index_select(0, flat).view(n, len(idx), c)


def _take(x: Tensor, dim: int, idx: Tensor) -> Tensor:
    """``x.index_select(dim, idx)``, by the faster gathers above for dims 1 and 2 of a 3-d x."""
    if x.dim() == 3 and dim in (1, 2):
        return _take_rows(x, idx) if dim == 1 else _take_cols(x, idx)
    return x.index_select(dim, idx)


@dataclass(frozen=True)
class Stage:
    """One ``F.interpolate`` call (its output cropped to ``len(rows) x len(cols)``)."""

    rows: Axis
    cols: Axis

    def apply(self, src: Tensor, row0: int, col0: int, rows: Axis, cols: Axis) -> Tensor:
        """Resize a source block to the output block ``rows x cols`` (axes taken from this stage).

        Args:
            src: (n, R, C) source rows ``row0 .. row0 + R``, columns ``col0 .. col0 + C``.
        """
        if cols.identity:
            u = _take_cols(src, cols.i0 - col0)
        else:
            a = _take_cols(src, cols.i0 - col0)
            b = _take_cols(src, cols.i1 - col0)
            u = _lerp(a, b, cols.w0, cols.w1)  # (n, R, nc): the width pass comes first
        if rows.identity:
            return _take_rows(u, rows.i0 - row0)
        r0, r1 = (rows.i0 - row0).tolist(), (rows.i1 - row0).tolist()
        starts = [0] + [i for i in range(1, len(r0)) if r0[i] != r0[i - 1] or r1[i] != r1[i - 1]]
        if len(r0) < GROUP_ROWS * len(starts):
            a, b = _take_rows(u, rows.i0 - row0), _take_rows(u, rows.i1 - row0)
            return _lerp(a, b, rows.w0[:, None], rows.w1[:, None])  # (n, nr, nc)
        # upsampling a lot: runs of output rows read the same two source rows, broadcast them
        out = torch.empty((u.shape[0], len(r0), u.shape[2]))
        for s, e in zip(starts, [*starts[1:], len(r0)]):
            part = out[:, s:e]
            torch.mul(u[:, r1[s], None], rows.w1[s:e, None], out=part)
            part.addcmul_(u[:, r0[s], None], rows.w0[s:e, None])
        return out


class LazyMasks:
    """(Q, H, W) full-size maps of one image computed on demand from a small (Q, h, w) source.

    ``values`` are logits, or probabilities when ``values_are_probs``. Use ``full_size_masks``
    to build one from network outputs.
    """

    def __init__(
        self,
        source: Tensor,
        stages: list[Stage],
        *,
        values_are_probs: bool = False,
        sigmoid_depth: int | None = None,
    ) -> None:
        self.source = source  # (Q, h, w) float32
        self.stages = stages
        self.values_are_probs = values_are_probs
        # the sigmoid is taken after this many stages (semantic-only models: between the two, the
        # official order); None: never (logits, or a source that already holds probabilities)
        self.sigmoid_depth = sigmoid_depth
        q = source.shape[0]
        if stages:
            self.shape = (q, len(stages[-1].rows), len(stages[-1].cols))
        else:
            self.shape = (q, *source.shape[-2:])

    @property
    def num_queries(self) -> int:
        return int(self.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.shape[1]), int(self.shape[2])

    def values(self, queries: Tensor, rows: tuple[int, int], cols: slice | Tensor) -> Tensor:
        """(n, y1 - y0, nc) float32 values of ``queries`` at rows ``y0 .. y1`` and ``cols``
        (a slice, or ascending column indices)."""
        if isinstance(cols, slice):
            start, stop, step = cols.indices(self.shape[2])
            if step == 1 and stop > start and not self.stages:
                return self._sigmoid(self.source[:, rows[0] : rows[1], start:stop]
                                     .index_select(0, queries).float(), 0)  # fmt: skip
            cols = torch.arange(start, stop, step)
        return self._block(queries, rows[0], rows[1], cols, len(self.stages))

    def probs(self, queries: Tensor, rows: tuple[int, int], cols: slice | Tensor) -> Tensor:
        """Like ``values``, as probabilities (the sigmoid of the logits)."""
        v = self.values(queries, rows, cols)
        return v if self.values_are_probs else v.sigmoid_()

    def points(self, queries: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
        """(n, P) values of ``queries`` at the pixels ``(ys[p], xs[p])``.

        From the block of rows and columns covering them when that is cheaper (a block value
        costs about 1/40 of a value computed alone) and small, else pixel by pixel.
        """
        n, p = len(queries), len(ys)
        if p == 0:
            return torch.empty((n, 0))
        y0, y1 = int(ys.min()), int(ys.max()) + 1
        cols, where = torch.unique(xs, return_inverse=True)  # sorted
        block = n * (y1 - y0) * len(cols)
        if block <= min(POINT_COST * n * p, CHUNK_VALUES):
            values = self._block(queries, y0, y1, cols, len(self.stages))  # (n, y, x)
            return values[:, ys - y0, where]
        qs = queries.repeat_interleave(p)
        return self.at(qs, ys.repeat(n), xs.repeat(n)).reshape(n, p)

    def at(self, qs: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
        """(P,) values of query ``qs[p]`` at pixel ``(ys[p], xs[p])``."""
        return self._at(qs, ys, xs, len(self.stages))

    def full(self, queries: Tensor | None = None) -> Tensor:
        """(n, H, W) values, materialised (small images and tests)."""
        qs = torch.arange(self.num_queries) if queries is None else queries
        return self.values(qs, (0, self.shape[1]), slice(None))

    def _sigmoid(self, x: Tensor, depth: int) -> Tensor:
        return x.sigmoid_() if depth == self.sigmoid_depth else x

    def _block(self, qs: Tensor, y0: int, y1: int, cols: Tensor, depth: int) -> Tensor:
        """Values at rows y0 .. y1 and the ascending column indices ``cols`` after ``depth`` stages."""
        if depth == 0:
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            out = self.source[:, y0:y1, c0:c1].index_select(0, qs)
            if c1 - c0 != len(cols):
                out = out.index_select(2, cols - c0)
            return self._sigmoid(out.float(), 0)
        stage = self.stages[depth - 1]
        rows, ax = stage.rows.take(slice(y0, y1)), stage.cols.take(cols)
        r0, r1 = int(rows.i0[0]), int(rows.i1[-1]) + 1  # indices grow with the output index
        c0, c1 = int(ax.i0[0]), int(ax.i1[-1]) + 1  # the source columns between, all of them
        src = self._block(qs, r0, r1, torch.arange(c0, c1), depth - 1)
        return self._sigmoid(stage.apply(src, r0, c0, rows, ax), depth)

    def _at(self, qs: Tensor, ys: Tensor, xs: Tensor, depth: int) -> Tensor:
        if depth == 0:
            out = self.source[qs, ys, xs].float()  # (P,)
        else:
            stage = self.stages[depth - 1]
            r, c = stage.rows.take(ys), stage.cols.take(xs)
            v00, v01, v10, v11 = (
                self._at(qs, ry, cx, depth - 1)
                for ry, cx in ((r.i0, c.i0), (r.i0, c.i1), (r.i1, c.i0), (r.i1, c.i1))
            )
            t0 = _lerp(v00, v01, c.w0, c.w1)
            t1 = _lerp(v10, v11, c.w0, c.w1)
            out = _lerp(t0, t1, r.w0, r.w1)
        return self._sigmoid(out, depth)

    @cached_property
    def grid(self) -> TileGrid:
        """Tiles of the output with bounds on every query's values inside each (cached)."""
        return TileGrid.build(self)


def _compose(stages: list[Stage], n_out: int, axis: str) -> tuple[Tensor, Tensor]:
    """(first, last) source index read by each output index through all stages."""
    first = last = torch.arange(n_out)
    for stage in reversed(stages):
        ax = getattr(stage, axis)
        first, last = ax.i0[first], ax.i1[last]
    return first, last


@dataclass
class TileGrid:
    """Output tiles and, per query and tile, bounds on the full-size values inside it.

    A tile is a set of whole output rows and columns whose values are convex combinations of a
    small window of the source; the window's minimum and maximum (widened by ``BOUND_MARGIN``)
    bound every value in the tile. Logit bounds keep their sign exactly: a tile whose window is all
    <= 0 has no value > 0.
    """

    row_edges: list[int]  # tile row i covers output rows row_edges[i] .. row_edges[i + 1]
    col_edges: list[int]
    lo: Tensor  # (Q, TR, TC) float32 lower bounds
    hi: Tensor  # (Q, TR, TC) float32 upper bounds
    probs: bool  # lo / hi bound probabilities, not logits

    @classmethod
    def build(cls, masks: LazyMasks) -> TileGrid:
        """Bounds from the values after as many stages as fit in GRID_VALUES (the small source,
        or the stage-1 map when it is small): the deeper, the finer the tiles and the tighter."""
        depth = 0
        for d in range(1, len(masks.stages)):  # never the last stage: that is the full size
            rows, cols = len(masks.stages[d - 1].rows), len(masks.stages[d - 1].cols)
            if masks.num_queries * rows * cols <= GRID_VALUES:
                depth = d
        if depth:
            full = masks.stages[depth - 1]
            src = masks._block(
                torch.arange(masks.num_queries),
                0,
                len(full.rows),
                torch.arange(len(full.cols)),
                depth,
            )
        else:
            src = masks._sigmoid(masks.source.float(), 0)  # (Q, h, w) as the stages read it
        h, w = masks.size
        later = masks.stages[depth:]
        row_edges, row_win = _tiles(later, h, "rows", src.shape[-2])
        col_edges, col_win = _tiles(later, w, "cols", src.shape[-1])
        lo = _window_reduce(
            _window_reduce(src, 1, row_win, torch.minimum), 2, col_win, torch.minimum
        )
        hi = _window_reduce(
            _window_reduce(src, 1, row_win, torch.maximum), 2, col_win, torch.maximum
        )
        lo = lo - lo.abs() * BOUND_MARGIN  # (Q, TR, TC)
        hi = hi + hi.abs() * BOUND_MARGIN
        sig = masks.sigmoid_depth
        if sig is not None and sig > depth:  # the sigmoid comes later, then convex stages
            lo, hi = lo.sigmoid() * (1 - BOUND_MARGIN), hi.sigmoid() * (1 + BOUND_MARGIN)
        return cls(row_edges, col_edges, lo, hi, masks.values_are_probs)

    @property
    def num_rows(self) -> int:
        return len(self.row_edges) - 1

    @cached_property
    def col_widths(self) -> Tensor:
        return torch.tensor(self.col_edges).diff()  # (TC,)

    @cached_property
    def row_heights(self) -> Tensor:
        return torch.tensor(self.row_edges).diff()  # (TR,)

    @cached_property
    def col_tile(self) -> Tensor:
        """(W,) int64 tile column of each output column."""
        return torch.repeat_interleave(torch.arange(len(self.col_widths)), self.col_widths)

    @cached_property
    def row_tile(self) -> Tensor:
        """(H,) int64 tile row of each output row."""
        return torch.repeat_interleave(torch.arange(len(self.row_heights)), self.row_heights)

    @cached_property
    def tile_pixels(self) -> Tensor:
        """(TR, TC) int64 pixels in each tile."""
        return self.row_heights[:, None] * self.col_widths[None, :]

    def expand(self, values: Tensor) -> Tensor:
        """(H, W) map holding each tile's entry of the (TR, TC) ``values`` (bool kept as bool)."""
        x = values.to(torch.uint8) if values.dtype == torch.bool else values
        # columns first, on the small map: the row gather then copies whole rows (a gather along
        # dim 1 of the (H, TC) map is ~10x slower)
        x = x.index_select(1, self.col_tile).index_select(0, self.row_tile)
        return x.bool() if values.dtype == torch.bool else x

    @cached_property
    def prob_bounds(self) -> tuple[Tensor, Tensor]:
        """(Q, TR, TC) lower and upper bounds on the probabilities (sigmoid of the logits)."""
        if self.probs:
            return self.lo, self.hi
        return self.lo.sigmoid() * (1 - BOUND_MARGIN), self.hi.sigmoid() * (1 + BOUND_MARGIN)

    def blocks(
        self, open_tiles: Tensor, sets: Tensor | None = None, pixels: int | None = None
    ) -> Iterator[Block]:
        """The open tiles as blocks to compute: runs of consecutive tile rows holding about
        ``pixels`` pixels (default BAND_PIXELS; at least one tile row), and in each run the open
        tile columns, split where that computes fewer values.

        Args:
            open_tiles: (TR, TC) bool, the tiles to compute.
            sets: optional (Q, TR, TC) bool, the queries each open tile needs. A block computes
                the union of its tiles' sets (``Block.queries``) on all its pixels; a run's
                columns are split where the values saved outweigh a block's fixed cost.
        """
        pixels = BAND_PIXELS if pixels is None else pixels
        width = int(self.col_edges[-1])
        busy = open_tiles.any(1).tolist()
        i = 0
        while i < len(busy):
            if not busy[i]:
                i += 1
                continue
            j = i + 1
            while (
                j < len(busy)
                and busy[j]
                and (self.row_edges[j] - self.row_edges[i]) * width < pixels
            ):
                j += 1
            tcols = open_tiles[i:j].any(0).nonzero()[:, 0]
            if sets is None:
                yield Block(self, i, j, tcols, None)
            else:
                col_sets = (sets[:, i:j] & open_tiles[i:j]).any(1)[:, tcols]  # (Q, n)
                widths = (self.col_widths[tcols] * (self.row_edges[j] - self.row_edges[i])).tolist()
                for part, members in _split_columns(col_sets, widths):
                    yield Block(self, i, j, tcols[part], members)
            i = j


def _split_columns(col_sets: Tensor, pixels: list[int]) -> Iterator[tuple[Tensor, Tensor]]:
    """Greedy left-to-right groups of columns: a column joins the current group unless computing
    the group's grown query union on it costs more than BLOCK_COST values over computing it
    apart. Yields (column positions, union members).

    Args:
        col_sets: (Q, n) bool, the queries each column needs.
        pixels: pixels in each column.
    """
    packed = np.packbits(col_sets.T.numpy(), axis=1)  # (n, ceil(Q / 8))
    bits = [int.from_bytes(row.tobytes(), "big") for row in packed]
    start, union, area = 0, 0, 0
    for c, b in enumerate(bits):
        grown = union | b
        joined = grown.bit_count() * (area + pixels[c])
        apart = union.bit_count() * area + b.bit_count() * pixels[c] + BLOCK_COST
        if c > start and joined > apart:
            yield torch.arange(start, c), col_sets[:, start:c].any(1).nonzero()[:, 0]
            start, grown, area = c, b, 0
        union, area = grown, area + pixels[c]
    yield torch.arange(start, len(bits)), col_sets[:, start:].any(1).nonzero()[:, 0]


@dataclass
class Block:
    """Tile rows ``i0 .. i1`` and tile columns ``tile_cols`` of a grid, computed together."""

    grid: TileGrid
    i0: int
    i1: int
    tile_cols: Tensor  # (m,) ascending tile columns
    queries: Tensor | None  # the union of the tiles' query sets, ascending (None: not asked)

    @cached_property
    def cols(self) -> Tensor:
        """(n,) ascending output columns of the block."""
        # numpy, not a torch mask + nonzero: torch's threaded nonzero stalls on a busy machine
        edges = np.asarray(self.grid.col_edges)
        tiles = self.tile_cols.numpy()
        starts, widths = edges[tiles], edges[tiles + 1] - edges[tiles]
        shift = np.repeat(starts - np.cumsum(widths) + widths, widths)  # (n,) start - offset
        return torch.from_numpy(shift + np.arange(int(widths.sum()), dtype=np.int64))

    @property
    def y0(self) -> int:
        return self.grid.row_edges[self.i0]

    @property
    def y1(self) -> int:
        return self.grid.row_edges[self.i1]

    def chunks(
        self, values_per_pixel: int, budget: int = CHUNK_VALUES
    ) -> Iterator[tuple[int, int]]:
        """Row ranges holding about ``budget`` values (``values_per_pixel`` per pixel) each."""
        step = max(1, budget // max(1, values_per_pixel * len(self.cols)))
        for a in range(self.y0, self.y1, step):
            yield a, min(a + step, self.y1)

    def tile_index(self, r0: int, r1: int) -> Tensor:
        """(r1 - r0) * n flat tile index (row * TC + column) of each pixel of rows r0 .. r1."""
        tc = len(self.grid.col_widths)
        rows = self.grid.row_tile[r0:r1] * tc  # (y,)
        return (rows[:, None] + self.grid.col_tile[self.cols][None, :]).reshape(-1)

    def local_index(self, r0: int, r1: int) -> Tensor:
        """(r1 - r0) * n index of each pixel's tile in the block's own (i1 - i0, m) tiles."""
        where = torch.zeros(len(self.grid.col_widths), dtype=torch.int64)
        where[self.tile_cols] = torch.arange(len(self.tile_cols))
        rows = (self.grid.row_tile[r0:r1] - self.i0) * len(self.tile_cols)  # (y,)
        return (rows[:, None] + where[self.grid.col_tile[self.cols]][None, :]).reshape(-1)

    def select(self, per_tile: Tensor) -> Tensor:
        """(..., TR, TC) -> (..., (i1 - i0) * m): the block's tiles, flattened as ``local_index``."""
        x = per_tile[..., self.i0 : self.i1, :].index_select(-1, self.tile_cols)
        return x.reshape(*per_tile.shape[:-2], -1)


def _tiles(stages: list[Stage], n_out: int, axis: str, n_src: int) -> tuple[list[int], list]:
    """Tile edges along one axis (tiles of ~TILE_PIXELS, at least one source cell) and each tile's
    source window (first, last)."""
    first, last = _compose(stages, n_out, axis)
    cell = max(1, round(TILE_PIXELS * n_src / max(1, n_out)))
    group = first // cell  # non-decreasing
    starts = torch.cat([torch.tensor([0]), (group.diff() != 0).nonzero()[:, 0] + 1])
    edges = [*starts.tolist(), n_out]
    windows = [(int(first[a]), int(last[b - 1])) for a, b in itertools.pairwise(edges)]
    return edges, windows


def _window_reduce(x: Tensor, dim: int, windows: list, fn) -> Tensor:
    """``fn`` (torch.maximum / minimum) over the index windows [first, last] of ``dim``, stacked
    along ``dim``: a sparse table (reductions over 1, 2, 4 ... entries), two lookups a window."""
    first = torch.tensor([a for a, _ in windows])
    last = torch.tensor([b for _, b in windows])
    span = last - first + 1
    level = torch.ones_like(span)
    while bool((level * 2 <= span).any()):
        level = torch.where(level * 2 <= span, level * 2, level)
    out = None
    table, p = x, 1
    while True:
        sel = (level == p).nonzero()[:, 0]
        if sel.numel():
            vals = fn(_take(table, dim, first[sel]), _take(table, dim, last[sel] - p + 1))
            if out is None:
                shape = list(x.shape)
                shape[dim] = len(windows)
                out = torch.empty(shape, dtype=x.dtype)
            out.index_copy_(dim, sel, vals)
        if p * 2 > int(level.max()):
            return out
        n = table.shape[dim]
        table = fn(table.narrow(dim, 0, n - p), table.narrow(dim, p, n - p))  # spans of 2p
        p *= 2


def full_size_masks(
    pred_masks: Tensor,
    padded_hw: tuple[int, int],
    image_hw: tuple[int, int],
    output_hw: tuple[int, int],
    *,
    probs_between: bool = False,
) -> LazyMasks:
    """The official two-stage resize of ``(Q, Hp/4, Wp/4)`` mask logits, done lazily.

    Values equal ``resize_mask_logits(pred_masks, padded_hw, image_hw, output_hw)``; with
    ``probs_between`` they equal ``resize_maps(sigmoid(stage 1), output_hw)`` (probabilities), the
    semantic-only models' order.
    """
    from maskformer.inference.postprocess import resize_maps, resize_mask_logits

    source = pred_masks.float().contiguous()  # (Q, h, w)
    (hp, wp), (hi, wi), (h0, w0) = padded_hw, image_hw, output_hw
    resized = (hp, wp) != tuple(source.shape[-2:]) or (hi, wi) != (hp, wp)  # stage 1 does work
    if h0 + w0 <= SMALL_OUTPUT:  # tiny: F.interpolate's own (other) kernel, materialised
        stage1 = resize_mask_logits(source, padded_hw, image_hw, image_hw) if resized else source
        if probs_between:
            probs = resize_maps(stage1.sigmoid(), output_hw).contiguous()
            return LazyMasks(probs, [], values_are_probs=True)
        return LazyMasks(resize_maps(stage1, output_hw).contiguous(), [])
    stages = []
    if resized and hp + wp <= SMALL_OUTPUT:
        source = resize_mask_logits(source, padded_hw, image_hw, image_hw).contiguous()
    elif resized:
        rows = linear_axis(source.shape[-2], hp).take(slice(0, hi))
        stages.append(Stage(rows, linear_axis(source.shape[-1], wp).take(slice(0, wi))))
    sigmoid_depth = len(stages) if probs_between else None
    if (h0, w0) != (hi, wi):
        stages.append(Stage(linear_axis(hi, h0), linear_axis(wi, w0)))
    return LazyMasks(source, stages, values_are_probs=probs_between, sigmoid_depth=sigmoid_depth)
