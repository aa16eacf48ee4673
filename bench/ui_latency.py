"""What a user waits for on the Annotate tab, in Chromium at 1440 x 900 on a 741 x 500 photo.

Usage: ``python bench/ui_latency.py [--before REV] [--checkpoint CKPT] [--clients 8] [--repeats 5]``.

Starts the app (``launch.py``, the demo model, a fresh workspace, 127.0.0.1) and drives it with
Playwright in Debian's Chromium; each figure is the wall time from the user's action to the page
showing its result, median (and max) of ``--repeats``:

- upload -> overlay visible (the model's forward pass included), goal <= 2.5 s
- click on the canvas -> segment selected, goal <= 0.3 s
- threshold slider -> new merge visible, goal <= 0.4 s
- a brush stroke / a polygon -> applied and visible, goal <= 0.5 s
- relabel / delete / merge / undo, goal <= 0.4 s
- 8 gradio_client sessions moving the threshold slider at once: p50 / p95 per event, goal p95 <= 1 s

With ``--before REV`` the app at git revision REV (a temporary ``git worktree``) is measured first
and both are printed side by side. The app before the canvas (a form of gradio components) has no
canvas click, polygon or hotkeys: there the nearest equivalents are timed (a legend click selects,
the brush is painted in gradio's ImageEditor and applied with its button) and the rest are "-".

The photo is ``bench/photo.py``'s procedural lake scene (no internet here). The machine is shared:
the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from bench.photo import jpeg_bytes, make_photo

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
GOALS = {
    "upload -> overlay visible": 2.5,
    "click -> segment selected": 0.3,
    "threshold slider -> new merge visible": 0.4,
    "brush stroke -> applied and visible": 0.5,
    "polygon -> applied and visible": 0.5,
    "relabel": 0.4,
    "delete": 0.4,
    "merge": 0.4,
    "undo": 0.4,
    "8 clients slider p50": None,
    "8 clients slider p95": 1.0,
}
WAIT_MS = 120_000


# ----------------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(app_dir: Path, checkpoint: Path, log: Path) -> Iterator[str]:
    """``launch.py`` of ``app_dir`` on a free port and a fresh workspace; yields its URL."""
    port = _free_port()
    ws = Path(tempfile.mkdtemp(prefix="mfs-bench-ws-"))
    env = {**os.environ, **ENV}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "launch.py",
                "--checkpoint",
                str(checkpoint),
                "--workspace",
                str(ws),
                "--port",
                str(port),
            ],
            cwd=app_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            end = time.time() + 300
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited ({proc.returncode}); see {log}")
                try:
                    with urllib.request.urlopen(url, timeout=5):
                        break
                except OSError:
                    if time.time() > end:
                        raise TimeoutError(f"no answer from {url}; see {log}") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
            shutil.rmtree(ws, ignore_errors=True)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A temporary detached ``git worktree`` of ``rev`` (the demo checkpoint is taken from here)."""
    path = Path(tempfile.mkdtemp(prefix="mfs-before-"))
    path.rmdir()
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), rev], cwd=ROOT, check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


# ----------------------------------------------------------------------------------- timing


def timed(action: Callable[[], None], done: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    action()
    done()
    return time.perf_counter() - t0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------------- drivers


class FormDriver:
    """The app before the canvas: gradio components in a long form (no canvas, no hotkeys)."""

    kind = "form (gradio components)"

    def __init__(self, page):
        self.page = page

    def status(self) -> str:
        return self.page.inner_text("#status")

    def wait_status_change(self, before: str) -> None:
        """Until the status line changes; a warning toast instead means the step failed."""
        self.page.wait_for_function(
            "b => document.querySelector('#status').innerText !== b ||"
            " document.querySelector('.toast-body')",
            arg=before,
            timeout=WAIT_MS,
        )
        toast = self.page.locator(".toast-body")
        if toast.count():
            text = toast.first.inner_text()
            self.page.evaluate("document.querySelectorAll('.toast-body').forEach(t => t.remove())")
            raise RuntimeError(f"the app warned: {text}")

    def wait_images(self, elem_id: str) -> None:
        self.page.wait_for_function(
            "id => { const t = document.querySelector(`#${id} [data-testid=status-tracker]`);"
            " const imgs = document.querySelectorAll(`#${id} img`);"
            " return (!t || t.classList.contains('hide')) && imgs.length > 0 &&"
            " Array.from(imgs).every(i => i.complete && i.naturalWidth > 0); }",
            arg=elem_id,
            timeout=WAIT_MS,
        )

    def upload(self, path: Path) -> float:
        before = self.status()

        def done():
            self.wait_status_change(before)
            self.wait_images("panoptic")

        return timed(lambda: self.page.set_input_files("#upload input[type=file]", str(path)), done)

    def select(self, i: int) -> float:
        items = self.page.locator("#panoptic .legend-item")
        n = items.count()
        legend, other = items.nth(i % n), items.nth((i + 1) % n)

        def done(label: str) -> None:
            self.page.wait_for_function(
                "t => { const l = document.querySelector('#brush-editor [data-testid=block-label]');"
                " const tr = document.querySelector('#brush-editor [data-testid=status-tracker]');"
                " return l && l.innerText.includes('Brush on ' + t) &&"
                " (!tr || tr.classList.contains('hide')); }",
                arg=label,
                timeout=WAIT_MS,
            )

        # select something else first so that the measured click changes the selection
        other.click()
        done(other.inner_text().strip())
        return timed(legend.click, lambda: done(legend.inner_text().strip()))

    def slider(self, value: float) -> float:
        before = self.status()
        rng = self.page.locator("#score-threshold input[type=range]")

        def done():
            self.wait_status_change(before)
            self.wait_images("panoptic")

        return timed(lambda: rng.fill(str(value)), done)

    def _button(self, elem_id: str) -> float:
        before = self.status()

        def done():
            self.wait_status_change(before)
            self.wait_images("panoptic")

        return timed(lambda: self.page.click(f"#{elem_id}"), done)

    def brush(self) -> float:
        canvas = self.page.locator("#brush-editor canvas").first
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        for i in range(1, 13):
            self.page.mouse.move(x + 8 * i, y + 5 * i)
        self.page.mouse.up()
        return self._button("apply-brush")

    def relabel(self) -> float:
        self.n_relabel = getattr(self, "n_relabel", 0) + 1
        self.page.click("#class-select input")
        self.page.get_by_role("option").nth(self.n_relabel % 5 + 1).click()
        return self._button("relabel-btn")

    def delete(self) -> float:
        return self._button("delete-btn")

    def merge(self) -> float:
        self.page.click("#merge-select input")
        self.page.get_by_role("option").nth(1).click()
        return self._button("merge-btn")

    def undo(self) -> float:
        return self._button("undo-btn")

    def choose_segment(self, n: int) -> None:
        self.page.click("#segment-select input")
        self.page.get_by_role("option").nth(n + 1).click()  # option 0 is "(none)"
        self.page.wait_for_function(
            "() => { const tr = document.querySelector('#brush-editor [data-testid=status-tracker]');"
            " const l = document.querySelector('#brush-editor [data-testid=block-label]');"
            " return l.innerText.includes('Brush on') && (!tr || tr.classList.contains('hide')); }",
            timeout=WAIT_MS,
        )


class CanvasDriver:
    """The canvas surface: ``#annotate-canvas`` with ``data-revision`` / ``data-selected``."""

    kind = "canvas (gr.HTML)"

    def __init__(self, page):
        self.page = page

    def attr(self, name: str) -> str:
        return self.page.get_attribute("#annotate-canvas", name) or ""

    def rev(self) -> int:
        return int(self.attr("data-revision") or 0)

    def wait_rev(self, before: int) -> None:
        self.page.wait_for_function(
            "b => +document.querySelector('#annotate-canvas').dataset.revision > b",
            arg=before,
            timeout=WAIT_MS,
            polling="raf",
        )

    def act(self, action: Callable[[], None]) -> float:
        before = self.rev()
        return timed(action, lambda: self.wait_rev(before))

    def box(self) -> dict:
        return self.page.locator("#annotate-canvas").bounding_box()

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        """Viewport point of the image fraction (fx, fy) (the canvas fits the image)."""
        x0, y0, w, h = (float(v) for v in self.attr("data-view").split(","))
        b = self.box()
        return b["x"] + x0 + fx * w, b["y"] + y0 + fy * h

    def upload(self, path: Path) -> float:
        return self.act(lambda: self.page.set_input_files("input[type=file]", str(path)))

    def select(self, i: int) -> float:
        points = [(0.70, 0.70), (0.30, 0.16), (0.88, 0.70), (0.5, 0.1)]
        self.page.keyboard.press("Escape")
        self.wait_selected("")
        x, y = self.at(*points[i % len(points)])
        t = timed(lambda: self.page.mouse.click(x, y), lambda: self.wait_selected(None))
        return t

    def wait_selected(self, value: str | None) -> None:
        """Until data-selected equals ``value`` (None: anything but '')."""
        self.page.wait_for_function(
            "v => { const s = document.querySelector('#annotate-canvas').dataset.selected;"
            " return v === null ? s !== '' : s === v; }",
            arg=value,
            timeout=WAIT_MS,
        )

    def slider(self, value: float) -> float:
        rng = self.page.locator("#score-threshold input[type=range]")
        return self.act(lambda: rng.fill(str(value)))

    def _stroke(self, points: list[tuple[float, float]]) -> None:
        m = self.page.mouse
        m.move(*points[0])
        m.down()
        for p in points[1:]:
            m.move(*p)
        m.up()

    def brush(self) -> float:
        self.page.keyboard.press("b")
        a, b = self.at(0.55, 0.75), self.at(0.65, 0.85)
        pts = [(a[0] + (b[0] - a[0]) * i / 12, a[1] + (b[1] - a[1]) * i / 12) for i in range(13)]
        m = self.page.mouse
        m.move(*pts[0])
        m.down()
        for p in pts[1:-1]:
            m.move(*p)
        t = self.act(lambda: (m.move(*pts[-1]), m.up()))
        self.page.keyboard.press("v")
        return t

    def polygon(self) -> float:
        self.page.keyboard.press("p")
        pts = [self.at(*f) for f in ((0.45, 0.55), (0.52, 0.55), (0.52, 0.62), (0.45, 0.62))]
        for p in pts:
            self.page.mouse.click(*p)
        t = self.act(lambda: self.page.keyboard.press("Enter"))
        self.page.keyboard.press("v")
        return t

    def relabel(self) -> float:
        return self.act(lambda: self.page.keyboard.press("2"))

    def delete(self) -> float:
        return self.act(lambda: self.page.keyboard.press("Delete"))

    def merge(self) -> float:
        self.page.keyboard.press("m")
        x, y = self.at(0.5, 0.1)
        return self.act(lambda: self.page.mouse.click(x, y))

    def undo(self) -> float:
        return self.act(lambda: self.page.keyboard.press("Control+z"))

    def pose_for_screenshot(self, photo: Path) -> None:
        """The README's picture: the lake photo, the ball selected, its query in the inspector."""
        self.act(lambda: self.page.set_input_files("input[type=file]", str(photo)))
        self.page.wait_for_selector(".mfs-insp[data-thumbs='1']")
        x, y = self.at(0.70, 0.70)
        self.page.mouse.click(x, y)
        self.page.wait_for_selector("#query-info")
        self.page.mouse.move(*self.at(0.85, 0.72))  # hover the crate: highlighted in both places
        self.page.wait_for_timeout(800)

    def choose_segment(self, n: int) -> None:
        x, y = self.at(*[(0.70, 0.70), (0.88, 0.70), (0.30, 0.16)][n % 3])
        self.page.mouse.click(x, y)
        self.wait_selected(None)


# ----------------------------------------------------------------------------------- runs


def record(out: dict[str, list[float]], key: str, measure_once: Callable[[], float]) -> None:
    """Append one timing; a step that fails (a warning instead of a result, a timeout) is
    recorded as a failure and printed, and the run goes on."""
    try:
        out[key].append(measure_once())
        print(f"  {key}: {out[key][-1]:.3f} s", flush=True)
    except Exception as e:  # noqa: BLE001 -- a bench reports and continues
        out.setdefault(f"{key} (failed)", []).append(0.0)
        print(f"  {key}: FAILED ({type(e).__name__}: {str(e).splitlines()[0][:120]})", flush=True)


def browser_figures(
    url: str, photo: Path, repeats: int, screenshot: Path | None = None
) -> tuple[str, dict[str, list[float]]]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {k: [] for k in GOALS if not k.startswith("8 clients")}
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="mfs-bench-chromium-"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1440, "height": 900},
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.wait_for_selector("input[type=file]", state="attached")
            page.wait_for_timeout(1500)
            canvas = page.locator("#annotate-canvas").count() > 0
            d = CanvasDriver(page) if canvas else FormDriver(page)
            for i in range(repeats):
                copy = photo.with_name(f"photo{i}.jpg")  # a new file: the model runs each time
                copy.write_bytes(jpeg_bytes(make_photo(seed=i)))
                record(out, "upload -> overlay visible", lambda p=copy: d.upload(p))
                page.wait_for_timeout(500)
            for i in range(repeats):
                record(out, "click -> segment selected", lambda i=i: d.select(i))
            if screenshot is not None and canvas:
                d.pose_for_screenshot(photo)
                page.screenshot(path=str(screenshot))
                print(f"  screenshot: {screenshot}")
            for i in range(repeats):
                record(
                    out,
                    "threshold slider -> new merge visible",
                    lambda i=i: d.slider(0.3 + 0.6 * (i % 2)),
                )
            d.slider(0.5)
            d.choose_segment(0)
            for _ in range(repeats):
                record(out, "brush stroke -> applied and visible", d.brush)
            if canvas:
                for _ in range(repeats):
                    record(out, "polygon -> applied and visible", d.polygon)
            for _ in range(repeats):
                d.choose_segment(0)
                record(out, "relabel", d.relabel)
                record(out, "undo", d.undo)
                d.choose_segment(1)
                record(out, "delete", d.delete)
                d.undo()
                d.choose_segment(0)
                record(out, "merge", d.merge)
                d.undo()
            return d.kind, out
        finally:
            ctx.close()


def _default(param: dict):
    """A value for an endpoint parameter after the file: thresholds, the old app's checkbox, the
    new app's queue."""
    label, kind = param.get("label", ""), param.get("component", "")
    if "Score" in label:
        return 0.5
    if "Overlap" in label:
        return 0.8
    return "all" if kind == "Dropdown" else False


def client_figures(url: str, photo: Path, clients: int, moves: int) -> list[float]:
    """Per-event latency of ``clients`` gradio_client sessions moving the threshold at once.

    Each session first opens the photo (one after another: the model runs one image at a time),
    then all move their slider together, ``moves`` events each.
    """
    from gradio_client import Client, handle_file

    sessions = []
    for _ in range(clients):
        c = Client(url, analytics_enabled=False, download_files=False, verbose=False)
        api = c.view_api(return_format="dict", print_info=False)["named_endpoints"]
        extra = [_default(p) for p in api["/open_upload"]["parameters"][1:]]
        c.predict(handle_file(str(photo)), *extra, api_name="/open_upload")
        sessions.append((c, len(api["/remerge"]["parameters"])))
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def one(k: int) -> None:
        c, n_args = sessions[k]
        start.wait()
        for i in range(moves):
            args = [0.3 + 0.05 * ((i + k) % 10), 0.8, False][:n_args]
            t0 = time.perf_counter()
            try:
                c.predict(*args, api_name="/remerge")
            except Exception as e:  # noqa: BLE001 -- a timeout is a result here: counted, timed
                with lock:
                    failures.append(f"{type(e).__name__}: {str(e)[:80]}")
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(f"  {len(failures)} of {len(latencies)} slider events failed: {failures[0]}")
    return latencies


def measure(
    app_dir: Path, checkpoint: Path, args: argparse.Namespace, shot: bool = False
) -> tuple[str, dict]:
    tmp = Path(tempfile.mkdtemp(prefix="mfs-bench-"))
    photo = tmp / "lake.jpg"
    photo.write_bytes(jpeg_bytes(make_photo()))
    try:
        with app_server(app_dir, checkpoint, tmp / "server.log") as url:
            kind, figs = browser_figures(
                url, photo, args.repeats, args.screenshot if shot else None
            )
            lat = sorted(client_figures(url, photo, args.clients, args.moves))
            figs["8 clients slider p50"] = [statistics.median(lat)]
            figs["8 clients slider p95"] = [lat[min(len(lat) - 1, int(0.95 * len(lat)))]]
        return kind, figs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fmt(xs: list[float] | None) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):6.3f} (max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None, help="git revision to measure first (e.g. main)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo.safetensors")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--moves", type=int, default=10, help="slider events per client")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only-before", action="store_true", help="skip the current tree")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--screenshot", type=Path, default=None, help="save the canvas app's page here (README)"
    )
    args = ap.parse_args()
    runs: list[tuple[str, str, dict]] = []
    print(f"load average at start: {load()}", flush=True)
    if args.before:
        with worktree(args.before) as wt:
            kind, figs = measure(wt, args.checkpoint.resolve(), args)
        runs.append((f"before ({args.before})", kind, figs))
        print(f"measured {args.before}; load average {load()}", flush=True)
    if not args.only_before:
        kind, figs = measure(ROOT, args.checkpoint.resolve(), args, shot=True)
        runs.append(("this tree", kind, figs))
    print(
        f"\n741x500 photo, Chromium 1440x900, demo model; seconds, median (max) of {args.repeats}"
    )
    for name, kind, _ in runs:
        print(f"  {name}: {kind}")
    head = f"{'':40s} {'goal':>6s}" + "".join(f" {name[:24]:>24s}" for name, _, _ in runs)
    print(head)
    for key, goal in GOALS.items():
        row = f"{key:40s} {'' if goal is None else f'{goal:6.1f}':>6s}"
        for _, _, figs in runs:
            row += f" {fmt(figs.get(key)):>24s}"
        print(row)
    print(f"load average at end: {load()}  ({os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {name: {"kind": kind, "seconds": figs} for name, kind, figs in runs}, indent=1
            )
        )


if __name__ == "__main__":
    main()
