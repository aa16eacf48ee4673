"""The Annotate tab (gradio glue only): the canvas, the segment panel, the inspector, navigation.

``build_annotate_tab(ctx)`` is called inside the app's ``gr.Tabs()``. The canvas and the panels
are ``gr.HTML`` components whose JavaScript lives in ``app/web``; every request of the canvas is a
custom event with its own api name (``app.annotate_events``), and every event returns only the
components it changed.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app import annotate_events as ev
from app import autosave, inspector, navigation, views
from app import callbacks as cb
from app.context import AppContext
from app.guard import guard
from app.queue import QUEUES
from app.session import Session
from maskformer.errors import UserError

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
CANVAS_JS = ("canvas_core.js", "canvas_input.js", "panel.js", "canvas_sync.js")


def _read(*names: str) -> str:
    return "\n".join((WEB / n).read_text(encoding="utf-8") for n in names)


def _canvas_js() -> str:
    # gradio finds a gr.HTML's custom events by their quoted names in js_on_load
    names = ", ".join(f'"{op}"' for op in (*ev.CANVAS_OPS, *ev.INSPECTOR_OPS))
    return f"const EVENTS = [{names}];\n" + _read(*CANVAS_JS)


def css() -> str:
    """The app's stylesheet (``launch(css=...)``)."""
    return _read("annotate.css")


@dataclass
class AnnotateTab:
    """What other tabs and the page wire to."""

    state: gr.State
    canvas: gr.HTML
    inspector: gr.HTML
    score: gr.Slider
    overlap: gr.Slider
    queue: gr.Dropdown
    open_id: gr.Number  # hidden: set it to open a workspace image here
    browser: gr.BrowserState  # the open image's id, kept by the browser across reloads
    model_line: gr.HTML
    restore: tuple = ()  # (fn, inputs, outputs) for demo.load: reopen the image of a reload
    inspect: tuple = ()  # (fn, inputs, outputs): the follow-up of every open


# Sessions by gradio session hash, so that closing the page can flush its autosave.
_SESSIONS: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()


def _remember(s: Session, request: gr.Request | None) -> None:
    if request is not None and getattr(request, "session_hash", None):
        _SESSIONS[request.session_hash] = s


def flush_on_unload(ctx: AppContext, request: gr.Request) -> None:
    s = _SESSIONS.pop(getattr(request, "session_hash", "") or "", None)
    if s is not None:
        try:
            autosave.flush(ctx, s)
        except Exception:
            log.exception("autosave on page close failed")


def build_annotate_tab(ctx: AppContext) -> AnnotateTab:
    """Components and events of the Annotate tab (inside a ``gr.Tab``)."""

    def new_session() -> Session:
        return Session(score_threshold=ctx.default_score, overlap_threshold=ctx.default_overlap)

    # a factory, not a Session: gradio calls it for each new page (and never serialises it)
    state = gr.State(new_session)
    with gr.Row(elem_id="model-row"):
        model_line = gr.HTML(views.model_line(ctx), elem_id="model-line")
    with gr.Row(elem_id="nav-row"):
        upload = gr.UploadButton(
            "Upload image", file_types=["image"], elem_id="upload", size="sm", min_width=110
        )
        example = gr.Dropdown(
            [p.name for p in ctx.examples],
            label="Example",
            value=ctx.examples[0].name if ctx.examples else None,
            show_label=False,
            container=False,
            elem_id="example-select",
            min_width=150,
        )
        example_btn = gr.Button("Open example", elem_id="open-example", size="sm", min_width=100)
        queue = gr.Dropdown(
            list(QUEUES),
            label="Queue",
            value="all",
            show_label=False,
            container=False,
            elem_id="queue-select",
            min_width=130,
        )
        prev_btn = gr.Button("◀ Prev A", elem_id="prev-image", size="sm", min_width=75)
        next_btn = gr.Button("Next D ▶", elem_id="next-image", size="sm", min_width=75)
        save_btn = gr.Button(
            "Save & next ⌃S", elem_id="save-next", size="sm", variant="primary", min_width=110
        )
        uncertain_btn = gr.Button(
            "Most unsure U", elem_id="next-uncertain", size="sm", min_width=105
        )
        accept_btn = gr.Button("Accept ✓", elem_id="review-accept", size="sm", min_width=75)
        changes_btn = gr.Button("Needs changes", elem_id="review-changes", size="sm", min_width=110)
        gr.HTML('<div id="image-status-root"></div>', elem_id="image-status", min_width=200)
    with gr.Row(equal_height=False, elem_id="annotate-main"):
        with gr.Column(scale=5, min_width=640):
            canvas = gr.HTML(
                views.canvas_value(ctx, Session()),
                label="canvas",  # the API's name for the request / answer dict
                html_template=_read("annotator.html"),
                js_on_load=_canvas_js(),
                elem_id="annotator",
            )
        with gr.Column(scale=2, min_width=360):
            score = gr.Slider(
                0,
                1,
                ctx.default_score,
                step=0.01,
                label="Score threshold (a query is kept above it)",
                elem_id="score-threshold",
            )
            overlap = gr.Slider(
                0,
                1,
                ctx.default_overlap,
                step=0.01,
                label="Overlap threshold (share of its mask a query must keep)",
                elem_id="overlap-threshold",
            )
            gr.HTML('<div id="segment-panel-root"></div>', elem_id="segment-panel")
            insp = gr.HTML(
                {"rev": 0, "image_id": None},
                label="inspector",
                html_template=_read("inspector.html"),
                js_on_load=_read("inspector.js"),
                elem_id="inspector",
            )
    open_id = gr.Number(visible=False, elem_id="open-image-id")
    browser = gr.BrowserState(None, storage_key="mfs-open-image")
    tab = AnnotateTab(state, canvas, insp, score, overlap, queue, open_id, browser, model_line)
    _wire_canvas(ctx, tab)
    _wire_opening(ctx, tab, upload, example, example_btn)
    _wire_navigation(ctx, tab, prev_btn, next_btn, save_btn, uncertain_btn, accept_btn, changes_btn)
    _wire_sliders(ctx, tab)
    return tab


# ---------------------------------------------------------------------------------- canvas


def _canvas_answer(ctx: AppContext, s: Session, req: dict, select: Any) -> dict:
    value = views.canvas_value(ctx, s, select)
    value["nonce"] = req.get("nonce")
    if req.get("_cls") is not None:
        value["cls"] = req["_cls"]
    return value


def _canvas_handler(ctx: AppContext, op: str):
    fn = ev.CANVAS_OPS[op]

    def handle(s: Session, req: Any, request: gr.Request = None) -> dict:
        t0 = time.perf_counter()
        req = dict(req) if isinstance(req, dict) else {}
        _remember(s, request)
        with s.lock:
            t1 = time.perf_counter()
            try:
                select = fn(ctx, s, req)
            except UserError as e:
                gr.Warning(str(e))
                select = views.KEEP
            value = _canvas_answer(ctx, s, req, select)
        if op in ev.EDIT_OPS and s.dirty:
            autosave.schedule(ctx, s)
        t2 = time.perf_counter()
        log.debug(
            "%s: waited %.0f ms for the session, ran %.0f ms", op, 1e3 * (t1 - t0), 1e3 * (t2 - t1)
        )
        return value

    handle.__name__ = op
    return handle


def _inspector_handler(ctx: AppContext, op: str):
    fn = ev.INSPECTOR_OPS[op]

    def handle(s: Session, req: Any) -> Any:
        req = dict(req) if isinstance(req, dict) else {}
        with s.lock:
            try:
                tab = fn(ctx, s, req)
                return inspector.inspector_value(ctx, s, tab, views=op == "show_views")
            except UserError as e:
                gr.Warning(str(e))
                return gr.skip()

    handle.__name__ = op
    return handle


def _wire_canvas(ctx: AppContext, tab: AnnotateTab) -> None:
    c = tab.canvas
    for op in ev.CANVAS_OPS:
        getattr(c, op)(
            _canvas_handler(ctx, op),
            [tab.state, c],
            [c],
            api_name=op,
            trigger_mode="multiple",
            show_progress="hidden",
        )
    for op in ev.INSPECTOR_OPS:
        getattr(c, op)(
            _inspector_handler(ctx, op),
            [tab.state, c],
            [tab.inspector],
            api_name=op,
            trigger_mode="always_last",
            show_progress="hidden",
        )


# ---------------------------------------------------------------------------------- opening


def _opened(ctx: AppContext, s: Session) -> tuple[dict, dict, int | None]:
    """Outputs of every event that opens an image: canvas, inspector (cleared), browser state."""
    return (
        views.canvas_value(ctx, s, None),
        {"rev": s.revision, "image_id": s.image_id, "gallery": {"items": []}},
        s.image_id,
    )


def _wire_opening(ctx, tab: AnnotateTab, upload, example, example_btn) -> None:
    outs = [tab.canvas, tab.inspector, tab.browser]
    model = dict(concurrency_id="model", concurrency_limit=1, show_progress="hidden")

    def open_upload(s, path, score, overlap, queue, request: gr.Request = None):
        _remember(s, request)
        with s.lock:
            cb.open_upload(ctx, s, path, score, overlap)
            navigation.locate(ctx, s, queue)
            return _opened(ctx, s)

    def open_example(s, name, score, overlap, queue, request: gr.Request = None):
        _remember(s, request)
        with s.lock:
            cb.open_example(ctx, s, name, score, overlap)
            navigation.locate(ctx, s, queue)
            return _opened(ctx, s)

    def open_image(s, image_id, score, overlap, queue, request: gr.Request = None):
        if image_id is None:  # the hidden field was cleared
            return gr.skip(), gr.skip(), gr.skip()
        _remember(s, request)
        with s.lock:
            navigation.open_id(ctx, s, int(image_id), score, overlap, queue)
            return _opened(ctx, s)

    def restore(s, image_id, score, overlap, queue, request: gr.Request = None):
        """A reload comes back to the image that was open (and its autosaved edits)."""
        if image_id is None or s.image_id is not None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            ctx.workspace.image(int(image_id))
        except (UserError, ValueError, TypeError):
            return gr.skip(), gr.skip(), None
        return open_image(s, image_id, score, overlap, queue, request)

    def inspect(s):
        if s.prediction is None:
            return gr.skip()
        with s.lock:
            cb.inspect_prediction(ctx, s)
            return inspector.inspector_value(ctx, s)

    ins = [tab.score, tab.overlap, tab.queue]
    upload.upload(
        guard(3)(open_upload), [tab.state, upload, *ins], outs, api_name="open_upload", **model
    ).then(guard(1)(inspect), [tab.state], [tab.inspector], api_visibility="private")
    example_btn.click(
        guard(3)(open_example),
        [tab.state, example, *ins],
        outs,
        api_name="open_example",
        **model,
    ).then(guard(1)(inspect), [tab.state], [tab.inspector], api_visibility="private")
    tab.open_id.change(
        guard(3)(open_image),
        [tab.state, tab.open_id, *ins],
        outs,
        api_name="open_image",
        **model,
    ).then(guard(1)(inspect), [tab.state], [tab.inspector], api_visibility="private")
    tab.restore = (guard(3)(restore), [tab.state, tab.browser, *ins], outs)
    tab.inspect = (guard(1)(inspect), [tab.state], [tab.inspector])


# ---------------------------------------------------------------------------------- navigation


def _wire_navigation(
    ctx, tab: AnnotateTab, prev_btn, next_btn, save_btn, uncertain_btn, accept_btn, changes_btn
) -> None:
    outs = [tab.canvas, tab.inspector, tab.browser]
    ins = [tab.state, tab.score, tab.overlap, tab.queue]
    model = dict(concurrency_id="model", concurrency_limit=1, show_progress="hidden")
    inspect = tab.inspect

    def stepper(direction: int):
        def go(s, score, overlap, queue, request: gr.Request = None):
            _remember(s, request)
            with s.lock:
                navigation.step(ctx, s, direction, score, overlap, queue)
                return _opened(ctx, s)

        go.__name__ = "next_image" if direction > 0 else "prev_image"
        return go

    def save_next(s, score, overlap, queue, request: gr.Request = None):
        _remember(s, request)
        with s.lock:
            before = s.image_id
            _, msg = navigation.save_and_next(ctx, s, score, overlap, queue)
            gr.Info(msg)
            if s.image_id == before:  # end of the queue: the same image, saved
                return views.canvas_value(ctx, s), gr.skip(), gr.skip()
            return _opened(ctx, s)

    def most_uncertain(s, score, overlap, queue, request: gr.Request = None):
        _remember(s, request)
        with s.lock:
            navigation.next_uncertain(ctx, s, score, overlap)
            return _opened(ctx, s)

    for btn, fn, name in [
        (prev_btn, stepper(-1), "prev_image"),
        (next_btn, stepper(+1), "next_image"),
        (save_btn, save_next, "save_next"),
        (uncertain_btn, most_uncertain, "next_uncertain"),
    ]:
        # "multiple": a key pressed again while an image opens is queued, not dropped
        btn.click(guard(3)(fn), ins, outs, api_name=name, trigger_mode="multiple", **model).then(
            *inspect, api_visibility="private"
        )

    def reviewer(verdict: str | None):
        def review(s, queue):
            with s.lock:
                navigation.set_review(ctx, s, verdict, queue)
                return views.canvas_value(ctx, s)

        return review

    accept_btn.click(
        guard(1)(reviewer("accepted")),
        [tab.state, tab.queue],
        [tab.canvas],
        api_name="review_accept",
        show_progress="hidden",
    )
    changes_btn.click(
        guard(1)(reviewer("needs-changes")),
        [tab.state, tab.queue],
        [tab.canvas],
        api_name="review_needs_changes",
        show_progress="hidden",
    )

    def requeue(s, queue):
        with s.lock:
            navigation.locate(ctx, s, queue)
            s.touch()
            return views.canvas_value(ctx, s)

    tab.queue.change(
        guard(1)(requeue),
        [tab.state, tab.queue],
        [tab.canvas],
        api_name="set_queue",
        show_progress="hidden",
    )


# ---------------------------------------------------------------------------------- sliders


def _wire_sliders(ctx, tab: AnnotateTab) -> None:
    def remerge(s, score, overlap):
        with s.lock:
            cb.remerge(ctx, s, score, overlap)
            value = views.canvas_value(ctx, s)
            insp = inspector.inspector_value(ctx, s) if s.prediction is not None else gr.skip()
        if s.dirty:
            autosave.schedule(ctx, s)
        return value, insp

    for slider, name in ((tab.score, "remerge"), (tab.overlap, "remerge_overlap")):
        slider.change(
            guard(2)(remerge),
            [tab.state, tab.score, tab.overlap],
            [tab.canvas, tab.inspector],
            api_name=name,
            trigger_mode="always_last",
            show_progress="hidden",
        )
