"""End to end in a real browser (Debian Chromium via Playwright, 1440 x 900): the Annotate canvas.

Screenshots of every step go to ``$MFS_SCREENSHOTS`` (default ``test-artifacts/screenshots``); the
test prints the folder. Waits are on the canvas's ``data-revision``, not on sleeps.
"""

import numpy as np
import pytest

from app.store import Workspace
from app_helpers import CHROMIUM, browser_page, screenshot_folder, shared_server
from bench.photo import jpeg_bytes, make_photo
from browser_canvas import (
    CANVAS,
    Shots,
    act,
    attr,
    click_segment,
    key,
    message,
    rev,
    screen_of_image,
    segment,
    segments,
    state,
    stroke,
    wait_idle,
    wait_js,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def shots():
    return screenshot_folder()


@pytest.fixture(scope="module")
def page():
    pytest.importorskip("playwright.sync_api")
    with browser_page(shared_server().url, height=900, width=1440) as pg:
        pg.wait_for_selector(CANVAS)
        wait_js(pg, "() => window.mfs !== undefined")
        yield pg


def test_annotation_journey(page, shots, tmp_path):
    shot = Shots(shots, "")
    server = shared_server()
    shot(page, "01-loaded")
    assert page.evaluate("document.documentElement.scrollHeight") <= 1125  # one screen
    box = page.locator(CANVAS).bounding_box()
    assert box["width"] * box["height"] >= 0.45 * 1440 * 900

    # upload a photo; the model runs once and the overlay shows
    photo = tmp_path / "lake.jpg"
    photo.write_bytes(jpeg_bytes(make_photo(240, 160, seed=3)))
    act(page, lambda: page.set_input_files("input[type=file]", str(photo)))
    image_id = int(attr(page, "data-image"))
    assert state(page, "[S.W, S.H]") == [240, 160]
    shot(page, "02-uploaded")

    # both sliders to 0: every query that is not no-object becomes a segment
    for slider in ("#score-threshold", "#overlap-threshold"):
        act(page, lambda s=slider: page.locator(f"{s} input[type=range]").fill("0"))
    wait_js(page, "() => window.mfs.state.segs.length >= 3")
    wait_idle(page)
    shot(page, "03-thresholds")

    # click a region: it is selected, its row highlighted, its query opened in the inspector
    segs = sorted(segments(page), key=lambda s: -s["area"])
    big = segs[0]["id"]
    click_segment(page, big)
    page.wait_for_selector(".mfs-row.on")
    wait_js(
        page,
        "q => (document.querySelector('#query-info') || {}).innerText?.startsWith(`query ${q}:`)",
        arg=segs[0]["query"],
    )
    shot(page, "04-selected")

    # relabel with a hotkey (class 2) and to a new class typed in the panel
    classes = state(page, "S.classes")
    key(page, "2")
    assert segment(page, big)["cls"] == classes[1]["name"]
    page.fill("#segment-panel-root .mfs-newclass", "kite")
    act(page, lambda: page.press("#segment-panel-root .mfs-newclass", "Enter"))
    wait_idle(page)
    assert segment(page, big)["cls"] == "kite"
    assert "relabel" in page.inner_text(".mfs-undo")
    shot(page, "05-relabelled")

    # brush: add a stroke to the selection, then erase the same path: back to at most the start
    area0 = segment(page, big)["area"]
    page.keyboard.press("b")
    a, b = screen_of_image(page, 20, 20), screen_of_image(page, 120, 70)
    path = [a, ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2), b]
    stroke(page, path)
    area1 = segment(page, big)["area"]
    assert area1 > area0 and message(page) == f"brush on {big}"
    shot(page, "06-brush-added")
    page.keyboard.press("e")
    stroke(page, path)
    assert segment(page, big)["area"] <= area0
    shot(page, "07-brush-erased")

    # polygon: a new segment of the brush class
    page.keyboard.press("Escape")
    page.keyboard.press("p")
    n = len(segments(page))
    for x, y in ((150, 100), (200, 100), (200, 140), (150, 140)):
        page.mouse.click(*screen_of_image(page, x, y))
    key(page, "Enter")
    assert len(segments(page)) == n + 1 and "polygon" in message(page)
    poly = int(attr(page, "data-selected"))
    assert segment(page, poly)["area"] == 50 * 40  # pixel centres inside the rectangle
    shot(page, "08-polygon")
    page.keyboard.press("v")

    # zoom in with the wheel, then fit
    z0 = float(attr(page, "data-zoom"))
    page.mouse.move(*screen_of_image(page, 120, 80))
    act(page, lambda: page.mouse.wheel(0, -400))
    assert float(attr(page, "data-zoom")) > z0
    shot(page, "09-zoomed")
    page.keyboard.press("f")
    wait_js(
        page,
        "z => Math.abs(+document.querySelector('#annotate-canvas').dataset.zoom - z) < 1e-3",
        arg=z0,
    )

    # probe: Alt+click shows which queries claim the pixel
    page.keyboard.down("Alt")
    page.mouse.click(*screen_of_image(page, 60.5, 40.5))
    page.keyboard.up("Alt")
    wait_js(
        page, "() => /^pixel \\(60, 40\\)/.test(document.querySelector('#probe-info').innerText)"
    )
    shot(page, "10-probe")

    # the query gallery: accept a query the merge dropped (raise the overlap threshold first)
    act(page, lambda: page.locator("#overlap-threshold input[type=range]").fill("1"))
    wait_idle(page)
    page.click("#inspector .mfs-tabs button[data-tab=queries]")
    page.check("#inspector .mfs-dropped")
    tile = page.locator("#query-gallery .mfs-tile.dropped").first
    tile.wait_for()
    tile.click()
    accept = page.locator("#accept-query")
    accept.wait_for()
    n = len(segments(page))
    act(page, accept.click)
    wait_idle(page)
    assert len(segments(page)) == n + 1 and message(page).startswith("accept query")
    shot(page, "11-accepted")

    # undo / redo say what they do
    key(page, "Control+z")
    assert len(segments(page)) == n and message(page).startswith("Undid: accept query")
    key(page, "Control+y")
    assert len(segments(page)) == n + 1 and message(page).startswith("Redid: accept query")
    shot(page, "12-undo-redo")

    # the semantic and instance views
    page.click("#inspector .mfs-tabs button[data-tab=views]")
    page.wait_for_selector("#views canvas.mfs-sem")
    shot(page, "13-views")

    # what the browser draws is the server's annotation, pixel for pixel (display = full size)
    shown = np.array(
        state(page, "Array.from(S.idx, k => k ? S.ids[k - 1] : 0)"), dtype=np.int64
    ).reshape(160, 240)

    # save (Ctrl+S saves as corrected and moves on)
    before = rev(page)
    page.keyboard.press("Control+s")
    ws = Workspace(server.root / "workspace")
    wait_js(
        page, "b => +document.querySelector('#annotate-canvas').dataset.revision > b", arg=before
    )
    wait_js(
        page,
        "id => document.querySelector('#annotate-canvas').dataset.image !== String(id)"
        " || /Saved/.test(document.body.innerText)",
        arg=image_id,
    )
    rec = ws.image(image_id)
    assert rec.status == "corrected" and rec.counts.get("kite") == 1
    stored, _, source = ws.load_annotation(image_id)
    assert source == "user"
    np.testing.assert_array_equal(shown, stored)
    shot(page, "14-saved")


def test_bad_file_shows_a_warning(page, shots, tmp_path):
    before = attr(page, "data-image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    page.set_input_files("input[type=file]", str(empty))
    # read the toast as soon as it shows: it closes itself after a few seconds
    text = wait_js(
        page,
        "() => Array.from(document.querySelectorAll('.toast-body')).map(e => e.innerText)"
        ".find(t => t.includes('empty.png')) || false",
    ).json_value()
    Shots(shots, "")(page, "15-bad-file-warning")
    assert "Warning" in text and "the data is empty" in text and attr(page, "data-image") == before
