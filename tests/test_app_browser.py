"""End to end in a real browser (Debian Chromium via Playwright): what a user clicks, step by step.

Screenshots of every step go to ``$MFS_SCREENSHOTS`` (default ``test-artifacts/screenshots``); the
test prints the folder.
"""

import json
import re
import time
import zipfile

import pytest

from app_helpers import CHROMIUM, browser_page, png_bytes, screenshot_folder, shared_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def shots():
    return screenshot_folder()


@pytest.fixture(scope="module")
def page(shots):
    pytest.importorskip("playwright.sync_api")
    with browser_page(shared_server().url, height=1000) as pg:
        pg.wait_for_selector("#upload")
        yield pg


_T0 = [time.perf_counter()]


def shot(page, shots, name):
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    print(f"  {name}: {time.perf_counter() - _T0[0]:.1f} s")  # step timings, shown with -s


def status(page) -> str:
    return page.inner_text("#status")


def wait_status(page, pattern: str):
    page.wait_for_function(
        "([re]) => new RegExp(re).test(document.querySelector('#status').innerText)", arg=[pattern]
    )
    return status(page)


def wait_idle(page, *elem_ids: str):
    """Wait until these components show no pending event (gradio hides their status tracker)."""
    for elem_id in elem_ids:
        page.wait_for_function(
            "id => { const t = document.querySelector(`#${id} [data-testid=status-tracker]`);"
            " return !t || t.classList.contains('hide'); }",
            arg=elem_id,
        )


def wait_editor(page, text: str, timeout: float | None = None):
    """Wait until the brush editor was redrawn for ``text`` (its label names segment and area)
    and has no pending event."""
    page.wait_for_function(
        "t => { const l = document.querySelector('#brush-editor [data-testid=block-label]');"
        " const tr = document.querySelector('#brush-editor [data-testid=status-tracker]');"
        " return l && l.innerText.includes(t) && (!tr || tr.classList.contains('hide')); }",
        arg=text,
        timeout=timeout,
    )


def segment_count(page) -> int:
    return int(re.search(r"(\d+) segments", status(page)).group(1))


def choose(page, elem_id: str, text: str):
    """Pick the dropdown option containing ``text``."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option").filter(has_text=text).first.click()


ROWS_JS = (
    "id => Array.from(document.querySelectorAll(`#${id} [role=row].virtual-row`)).map("
    "r => Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.innerText.trim()))"
)


def table_rows(page, elem_id: str) -> list[list[str]]:
    return page.evaluate(ROWS_JS, elem_id)


def wait_first_area(page, condition: str):
    """Wait until the first segment's area (table column 3) satisfies ``condition`` (JS, on a)."""
    page.wait_for_function(
        f"() => {{ const rows = ({ROWS_JS})('segments-table'); "
        f"if (!rows.length) return false; const a = parseInt(rows[0][3]); "
        f"return {condition}; }}"
    )


def editor_canvas(page) -> dict:
    """The brush canvas's box in viewport coordinates (what page.mouse uses), after scrolling it
    into view; measure it again after anything that may scroll the page."""
    canvas = page.locator("#brush-editor canvas").first
    canvas.scroll_into_view_if_needed()
    return canvas.bounding_box()


def stroke(page, box, x0, y0, x1, y1, steps=12):
    page.mouse.move(box["x"] + x0, box["y"] + y0)
    page.mouse.down()
    for i in range(1, steps + 1):
        t = i / steps
        page.mouse.move(box["x"] + x0 + (x1 - x0) * t, box["y"] + y0 + (y1 - y0) * t)
    page.mouse.up()


def test_user_journey(page, shots, tmp_path):
    _T0[0] = time.perf_counter()
    shot(page, shots, "01-loaded")

    # upload an image; the model runs once
    img = tmp_path / "browser.png"
    img.write_bytes(png_bytes(120, 160, seed=5))
    page.set_input_files("#upload input[type=file]", str(img))
    wait_status(page, r"browser\.png, 160x120")
    page.wait_for_selector("#original img")
    shot(page, shots, "02-uploaded")

    # move both threshold sliders to 0: every query that is not no-object becomes a segment
    for slider in ("#score-threshold", "#overlap-threshold"):
        page.locator(f"{slider} input[type=range]").fill("0")
    # at 0 / 0 this checkpoint gives several segments; at 0 / 0.8 (the first event) only one
    wait_status(page, r": ([2-9]|\d\d+) segments")
    wait_idle(page, "segments-table", "brush-editor")
    n0 = segment_count(page)
    shot(page, shots, "03-thresholds")

    # the query gallery: 20 thumbnails; open one
    page.wait_for_function("document.querySelectorAll('#query-gallery img').length === 20")
    page.locator("#query-gallery button.thumbnail-item").first.click()
    page.wait_for_function(
        "/query \\d+: mask area/.test(document.querySelector('#query-info').innerText)"
    )
    page.wait_for_selector("#query-heatmap img")
    shot(page, shots, "04-query")

    # click a pixel of the original: the probe lists the queries claiming it
    page.locator("#original img").click()  # the centre of the picture
    page.wait_for_function(
        "/pixel \\(\\d+, \\d+\\)/.test(document.querySelector('#probe-info').innerText)"
    )
    shot(page, shots, "05-probe")

    # relabel segment 1 to a new class, delete segment 2
    choose(page, "segment-select", "1: ")
    page.fill("#class-select input", "kite")
    page.press("#class-select input", "Enter")
    page.click("#relabel-btn")
    page.wait_for_function("document.querySelector('#segments-table').innerText.includes('kite')")
    assert table_rows(page, "segments-table")[0][1] == "kite"
    shot(page, shots, "06-relabelled")
    if n0 > 1:
        choose(page, "segment-select", "2: ")
        page.click("#delete-btn")
        wait_status(page, f": {n0 - 1} segments")
        shot(page, shots, "07-deleted")

    # brush: with segment 1 selected, paint a green (add) stroke, apply, then a red (remove) one
    # over the same path
    choose(page, "segment-select", "1: ")
    area0 = int(table_rows(page, "segments-table")[0][3])
    wait_editor(page, f"Brush on 1: kite ({area0} px)")
    canvas = editor_canvas(page)
    cx, cy = canvas["width"] / 2, canvas["height"] / 2
    stroke(page, canvas, cx - 60, cy - 40, cx + 60, cy + 40)
    shot(page, shots, "08-brush-painted")
    page.click("#apply-brush")
    wait_first_area(page, f"a !== {area0}")
    area1 = int(table_rows(page, "segments-table")[0][3])
    assert area1 > area0  # green only adds pixels to the segment
    wait_editor(page, f"({area1} px)")
    shot(page, shots, "09-brush-applied")
    # Gradio's editor sometimes stays "processing" after the redraw (seen on CI and here, about
    # one run in five; a stroke drawn then is lost): wait a while, else pick the segment again,
    # which redraws the editor, as a user would
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        wait_editor(page, f"({area1} px)", timeout=15_000)
    except PlaywrightTimeout:
        choose(page, "segment-select", "(none")
        choose(page, "segment-select", "1: ")
        wait_editor(page, f"({area1} px)")
    page.click("#brush-editor button[aria-label='Color']")
    page.click("#brush-editor button.color[style*='204, 50, 50']")
    canvas = editor_canvas(page)  # clicking Apply scrolled the page: measure again
    stroke(page, canvas, cx - 60, cy - 40, cx + 60, cy + 40)
    shot(page, shots, "09b-erase-painted")
    page.click("#apply-brush")
    wait_first_area(page, f"a < {area1}")
    # the red stroke covers exactly the green one's pixels: all that was added is gone again
    assert int(table_rows(page, "segments-table")[0][3]) <= area0
    wait_editor(page, "Brush on 1: kite (")
    shot(page, shots, "10-brush-removed")

    # save; the workspace lists the image as corrected with its classes
    page.click("#save-btn")
    wait_status(page, "saved")
    page.get_by_role("tab", name="Workspace").click()
    page.get_by_text("Table (the shown queue").click()
    page.wait_for_function(
        "document.querySelector('#workspace-table').innerText.includes('corrected')"
    )
    row = next(r for r in table_rows(page, "workspace-table") if r[1] == "browser.png")
    assert row[3] == "corrected" and "kite x1" in row[7]
    shot(page, shots, "11-workspace")

    # export COCO panoptic and download the zip through the browser
    page.get_by_text("Export", exact=True).first.click()
    page.get_by_label("coco-panoptic").check()
    page.click("#export-btn")
    link = page.locator("#export-file a").first
    link.wait_for()
    with page.expect_download() as dl:
        link.click()
    path = tmp_path / "export.zip"
    dl.value.save_as(path)
    shot(page, shots, "12-exported")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        data = json.loads(zf.read(next(n for n in names if n.endswith("/panoptic.json"))))
    image = next(i for i in data["images"] if i["file_name"].endswith("browser.png"))
    ann = next(a for a in data["annotations"] if a["image_id"] == image["id"])
    kite = next(c["id"] for c in data["categories"] if c["name"] == "kite")
    assert (image["width"], image["height"]) == (160, 120)
    assert [s["category_id"] for s in ann["segments_info"]].count(kite) == 1
    assert any(n.endswith("/panoptic/" + ann["file_name"]) for n in names)


def test_bad_file_shows_a_warning(page, shots, tmp_path):
    page.get_by_role("tab", name="Annotate").click()
    before = status(page)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    page.set_input_files("#upload input[type=file]", str(empty))
    # read the toast as soon as it shows: it closes itself after a few seconds
    text = page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.toast-body')).map(e => e.innerText)"
        ".find(t => t.includes('empty.png')) || false"
    ).json_value()
    shot(page, shots, "13-bad-file-warning")
    assert "Warning" in text and "the data is empty" in text and status(page) == before
