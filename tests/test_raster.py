"""The canvas's strokes and polygons become exactly the pixels whose centres they cover."""

import numpy as np
import pytest

from app import raster
from app.editing import EditError

shapely = pytest.importorskip("shapely")


def _centres(shape):
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    return xs.ravel(), ys.ravel()


def _far_from(geom, xs, ys, tol=1e-6):
    """Pixel centres not within ``tol`` of the shape's boundary (where rounding may decide)."""
    d = shapely.distance(geom.boundary, shapely.points(xs, ys))
    return d > tol


def _star_polygon(rng, cx, cy):
    """A simple (never self-crossing) polygon: corners at sorted angles around a centre."""
    n = int(rng.integers(3, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(4, 30, n)
    return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)


@pytest.mark.parametrize("seed", range(6))
def test_polygon_matches_shapely_containment(seed):
    rng = np.random.default_rng(seed)
    shape = (40, 52)
    pts = _star_polygon(rng, 26, 20)  # may leave the image
    got = raster.paste(shape, raster.polygon_mask(shape, pts)).ravel()
    poly = shapely.Polygon(pts)
    xs, ys = _centres(shape)
    sure = _far_from(poly, xs, ys)
    np.testing.assert_array_equal(got[sure], shapely.contains_xy(poly, xs, ys)[sure])


def _pnpoly(pts, x, y):
    """W. R. Franklin's even-odd test for one point (a ray to the right)."""
    inside = False
    n = len(pts)
    for i in range(n):
        (xi, yi), (xj, yj) = pts[i], pts[i - 1]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
    return inside


@pytest.mark.parametrize("seed", range(4))
def test_self_crossing_polygon_is_even_odd(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (24, 30)
    pts = rng.uniform(-3, 33, size=(7, 2))  # almost surely self-crossing
    got = raster.paste(shape, raster.polygon_mask(shape, pts))
    ring = shapely.LinearRing(pts)
    for y in range(shape[0]):
        for x in range(shape[1]):
            if ring.distance(shapely.Point(x + 0.5, y + 0.5)) > 1e-6:
                assert got[y, x] == _pnpoly(pts, x + 0.5, y + 0.5), (x, y)


@pytest.mark.parametrize("seed", range(6))
def test_stroke_matches_exact_distance_to_the_polyline(seed):
    rng = np.random.default_rng(seed)
    shape = (48, 40)
    pts = rng.uniform(-3, 45, size=(rng.integers(1, 7), 2))
    width = float(rng.uniform(0.8, 9.0))
    got = raster.paste(shape, raster.stroke_mask(shape, pts, width)).ravel()
    line = shapely.Point(pts[0]) if len(pts) == 1 else shapely.LineString(pts)
    xs, ys = _centres(shape)
    d = shapely.distance(line, shapely.points(xs, ys))
    sure = np.abs(d - width / 2) > 1e-6
    np.testing.assert_array_equal(got[sure], (d <= width / 2)[sure])


def test_hand_checked_cases():
    # a 2-pixel-wide vertical stroke through column centres x = 3.5 covers columns 3 (and 2, 4 at
    # distance exactly 1.0 = the radius: inside, the boundary counts)
    m = raster.paste((6, 8), raster.stroke_mask((6, 8), [[3.5, 1.5], [3.5, 4.5]], 2.0))
    assert m[1:5, 2:5].all() and m.sum() == 3 * 4 + 2  # plus the caps above and below
    # a square polygon on pixel edges covers exactly the pixels inside
    sq = raster.paste((10, 10), raster.polygon_mask((10, 10), [[2, 3], [6, 3], [6, 8], [2, 8]]))
    assert sq.sum() == 4 * 5 and sq[3:8, 2:6].all()


def test_polygons_sharing_an_edge_never_share_a_pixel():
    shape = (30, 30)
    left = [[1.0, 1.0], [15.5, 1.0], [15.5, 29.0], [1.0, 29.0]]
    right = [[15.5, 1.0], [29.0, 1.0], [29.0, 29.0], [15.5, 29.0]]
    a = raster.paste(shape, raster.polygon_mask(shape, left))
    b = raster.paste(shape, raster.polygon_mask(shape, right))
    whole = raster.paste(shape, raster.polygon_mask(shape, [[1, 1], [29, 1], [29, 29], [1, 29]]))
    assert not (a & b).any()
    np.testing.assert_array_equal(a | b, whole)


def test_deterministic_and_bounded_to_the_image():
    pts = [[-10.0, -10.0], [100.0, 5.0], [20.0, 70.0]]
    one = raster.polygon_mask((40, 50), pts)
    two = raster.polygon_mask((40, 50), [list(p) for p in pts])
    np.testing.assert_array_equal(one[0], two[0])
    mask, (y0, x0, y1, x1) = one
    assert (y0, x0) >= (0, 0) and y1 <= 40 and x1 <= 50 and mask.shape == (y1 - y0, x1 - x0)
    assert raster.stroke_mask((10, 10), [[50, 50], [60, 60]], 3) is None  # outside: no pixel


@pytest.mark.parametrize(
    "points, width, match",
    [
        ([[1, 1], [2, float("nan")]], 3, "finite"),
        ([["a", 1]], 3, "numbers"),
        ([[1, 1]], 0, "positive"),
        ([[1, 1]] * (raster.MAX_POINTS + 1), 3, "at most"),
    ],
)
def test_bad_strokes_are_refused(points, width, match):
    with pytest.raises(EditError, match=match):
        raster.stroke_mask((10, 10), points, width)


def test_polygon_needs_three_points():
    with pytest.raises(EditError, match="at least 3"):
        raster.polygon_mask((10, 10), [[1, 1], [2, 2]])
