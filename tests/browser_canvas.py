"""Driving the Annotate canvas in a real browser: the helpers the browser tests share.

Waits are on the canvas's ``data-revision`` (it increases whenever what the canvas shows
changes), never on sleeps.
"""

from __future__ import annotations

import time
from pathlib import Path

CANVAS = "#annotate-canvas"


def attr(page, name: str) -> str:
    return page.get_attribute(CANVAS, name) or ""


def rev(page) -> int:
    return int(attr(page, "data-revision") or 0)


# What the page says about its requests, for the message of a wait that timed out.
DIAGNOSE = """() => {
  const M = window.mfs, S = M && M.state, cv = document.querySelector('#annotate-canvas');
  const msg = document.querySelector('.mfs-msg'), insp = document.querySelector('.mfs-insp');
  return JSON.stringify({
    revision: cv && cv.dataset.revision, image: cv && cv.dataset.image,
    selected: cv && cv.dataset.selected, busy: S && S.busy, nonce: S && S.nonce,
    message: msg && msg.innerText, last_requests: M && M.timings.slice(-6),
    inspector: insp && { ...insp.dataset },
    toasts: [...document.querySelectorAll('.toast-body')].map((e) => e.innerText).slice(-3),
  });
}"""


def wait_js(page, expression: str, arg=None, timeout: float | None = None):
    """``page.wait_for_function`` (its handle returned); a timeout fails with what the page says about its requests
    (busy count, the last requests' [op, ms to answer, ms to drawn], message, warnings, the
    inspector's state) and the last errors of its console."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(expression, arg=arg, timeout=timeout)
    except PlaywrightTimeout as e:
        try:
            said = page.evaluate(DIAGNOSE)
        except Exception as inner:  # noqa: BLE001 -- the page itself may be gone
            said = f"(the page could not be read: {inner})"
        console = getattr(page, "mfs_console", [])[-8:]
        raise AssertionError(
            f"timed out waiting for {expression!r} ({arg!r}); page: {said}; console: {console}"
        ) from e


def wait_rev(page, before: int) -> None:
    wait_js(page, "b => +document.querySelector('#annotate-canvas').dataset.revision > b", before)


def act(page, action) -> None:
    """Do ``action`` and wait until the canvas shows its result."""
    before = rev(page)
    action()
    wait_rev(page, before)


def wait_idle(page) -> None:
    """Until no request of the canvas is in flight."""
    wait_js(page, "() => window.mfs && window.mfs.state.busy === 0")


def state(page, expr: str):
    """Evaluate ``expr`` on the canvas's client state ``S``."""
    return page.evaluate(f"() => {{ const S = window.mfs.state; return {expr}; }}")


def segments(page) -> list[dict]:
    return state(page, "S.segs")


def segment(page, sid: int) -> dict | None:
    return next((s for s in segments(page) if s["id"] == sid), None)


def screen_of_image(page, x: float, y: float) -> tuple[float, float]:
    """Viewport point of full-size image point (x, y)."""
    box = page.locator(CANVAS).bounding_box()
    sx, sy = page.evaluate(
        "([x, y]) => { const S = window.mfs.state;"
        " return [x * S.vw / S.W * S.zoom + S.panX, y * S.vh / S.H * S.zoom + S.panY]; }",
        [x, y],
    )
    return box["x"] + sx, box["y"] + sy


def point_in(page, sid: int) -> tuple[float, float]:
    """A viewport point well inside segment ``sid`` (its pixel farthest from its border along
    the row through its centre), from the canvas's own index map."""
    vx, vy = page.evaluate(
        """id => { const S = window.mfs.state; const k = S.ids.indexOf(id) + 1;
        let sx = 0, sy = 0, n = 0;
        for (let p = 0; p < S.idx.length; p++) if (S.idx[p] === k) {
          sx += p % S.vw; sy += Math.floor(p / S.vw); n++; }
        let best = null, bd = -1;
        for (let p = 0; p < S.idx.length; p++) if (S.idx[p] === k) {
          const x = p % S.vw, y = Math.floor(p / S.vw);
          let d = 0; while (d < 40 && x - d > 0 && x + d < S.vw - 1 && S.idx[p - d] === k &&
            S.idx[p + d] === k && S.idx[p - d * S.vw] === k && S.idx[p + d * S.vw] === k) d++;
          const score = d * 1000 - Math.hypot(x - sx / n, y - sy / n);
          if (score > bd) { bd = score; best = [x, y]; } }
        return [best[0] + 0.5, best[1] + 0.5]; }""",
        sid,
    )
    box = page.locator(CANVAS).bounding_box()
    zoom, px, py = state(page, "[S.zoom, S.panX, S.panY]")
    return box["x"] + px + vx * zoom, box["y"] + py + vy * zoom


def click_segment(page, sid: int) -> None:
    act(page, lambda: page.mouse.click(*point_in(page, sid)))
    assert attr(page, "data-selected") == str(sid)


def stroke(page, points: list[tuple[float, float]]) -> None:
    """A mouse drag through viewport ``points`` (the canvas applies it on release)."""
    m = page.mouse
    m.move(*points[0])
    m.down()
    for p in points[1:]:
        m.move(*p, steps=3)
    act(page, m.up)
    wait_idle(page)


def key(page, combo: str) -> None:
    """A hotkey that changes the canvas (waits for its answer)."""
    act(page, lambda: page.keyboard.press(combo))
    wait_idle(page)


def message(page) -> str:
    return page.inner_text(".mfs-msg")


class Shots:
    """Numbered screenshots of each step, with the time since the first."""

    def __init__(self, folder: Path, prefix: str):
        self.folder, self.prefix, self.t0 = folder, prefix, time.perf_counter()

    def __call__(self, page, name: str) -> None:
        page.screenshot(path=str(self.folder / f"{self.prefix}{name}.png"), full_page=True)
        print(f"  {self.prefix}{name}: {time.perf_counter() - self.t0:.1f} s")
