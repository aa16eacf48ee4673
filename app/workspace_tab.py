"""The Workspace tab: thumbnails with status badges, queues (by status, review or uncertainty),
review verdicts, predict all (progress, ETA, cancel), import and export. Layout and wiring only:
the logic is in ``app.workspace_view``, ``app.queue``, ``app.predict_all`` and ``app.export``.

Cheap by design: thumbnails are made once per image and look (``thumbs/`` in the workspace) and
sent as file URLs the browser caches; a 2 s timer re-sends the page only when the workspace's
fingerprint (status, review, score of every image) changed, and the job progress only while a
job runs or its line changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.context import Context

from app import workspace_view as wv
from app.callbacks import AppContext
from app.export import EXPORTABLE, FORMATS, REVIEW_FILTERS, Selection, export_dataset_zip
from app.guard import guard
from app.predict_all import PredictAll
from app.queue import QUEUES, ordered
from app.safe_import import import_for_app
from maskformer.errors import UserError

POLL_S = 2.0  # seconds between checks for changes made elsewhere (a save, the predict-all job)
TABLE_ROWS = 1000  # the table shows the head of the queue: it is re-sent on every change


@dataclass
class WorkspaceTab:
    """What other tabs wire to.

    Attributes:
        open_id: hidden number; a click on a thumbnail (or a table row) sets it to that image's
            id, after setting it to None (so a second click on the same image fires again):
            wire ``open_id.change`` to open the image elsewhere, and ignore None.
        refresh: returns the values for ``refresh_outputs`` that make the tab redraw itself (call
            it after a save on another tab).
        refresh_outputs: the components ``refresh`` updates.
    """

    open_id: gr.Number
    refresh: Callable[[], tuple]
    refresh_outputs: list
    components: dict[str, Any] = field(default_factory=dict)


def _progress_md(p: Any) -> str:
    if p.state == "idle":
        return p.message
    bar = "█" * round(20 * p.fraction) + "░" * (20 - round(20 * p.fraction))
    return f"`{bar}` {p.message}"


def build_workspace_tab(ctx: AppContext) -> WorkspaceTab:
    """Build the tab (call inside ``with gr.Tabs():``) and wire its own events."""
    ws = ctx.workspace
    job = PredictAll(ws)

    def predict_all_progress() -> dict:
        """The predict-all job now: state, done, total, predicted, eta_s, message."""
        p = job.progress()
        return {
            "state": p.state,
            "done": p.done,
            "total": p.total,
            "predicted": p.predicted,
            "eta_s": p.eta_s,
            "message": p.message,
        }

    with gr.Tab("Workspace", id="workspace"):
        gr.api(predict_all_progress, api_name="predict_all_progress")
        with gr.Row():
            queue = gr.Radio(
                list(QUEUES),
                value="all",
                label="Show",
                info="a status, a review verdict, or 'uncertain': the model's least sure first",
                elem_id="ws-queue",
                scale=4,
            )
            page = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="ws-page", scale=1)
        counts = gr.Markdown(elem_id="ws-counts")
        gallery = gr.Gallery(
            label="Click an image to open it",
            columns=8,
            height=440,
            allow_preview=False,
            object_fit="contain",  # the badges sit at the edges: never crop them away
            format="png",
            elem_id="ws-gallery",
        )
        with gr.Row():
            prev_btn = gr.Button("◀ Previous page", elem_id="ws-prev-page", size="sm")
            next_btn = gr.Button("Next page ▶", elem_id="ws-next-page", size="sm")
            refresh_btn = gr.Button("Refresh", elem_id="refresh-btn", size="sm")
        open_id = gr.Number(visible=False, precision=0, elem_id="ws-open-id")
        with gr.Row():
            selected = gr.Number(
                None, label="Image id", precision=0, elem_id="ws-selected", scale=1
            )
            accept_btn = gr.Button("Accept", elem_id="ws-accept", variant="primary")
            changes_btn = gr.Button("Needs changes", elem_id="ws-needs-changes", variant="stop")
            clear_btn = gr.Button("Clear review", elem_id="ws-clear-review")
        details = gr.Markdown(wv.details(None), elem_id="ws-details")
        with gr.Accordion("Predict all", open=True):
            with gr.Row():
                predict_btn = gr.Button(
                    "Predict all unseen images", elem_id="ws-predict-all", variant="primary"
                )
                cancel_btn = gr.Button("Cancel", elem_id="ws-cancel-predict")
            progress = gr.Markdown(job.progress().message, elem_id="ws-progress")
        with gr.Accordion(
            f"Table (the shown queue, in its order; the first {TABLE_ROWS})", open=False
        ):
            table = gr.Dataframe(
                headers=wv.TABLE_HEADERS, interactive=False, elem_id="workspace-table"
            )
        with gr.Accordion("Import", open=False):
            with gr.Row():
                import_path = gr.Textbox(
                    label="Import from a server path",
                    placeholder="folder of images, COCO panoptic folder or JSON, COCO instances JSON",
                    elem_id="import-path",
                )
                import_files = gr.File(
                    label="…or upload images",
                    file_count="multiple",
                    file_types=["image", ".zip"],
                    elem_id="import-files",
                )
            import_btn = gr.Button("Import", elem_id="import-btn")
            import_info = gr.Markdown(elem_id="import-info")
        with gr.Accordion("Export", open=False):
            with gr.Row():
                fmt = gr.Radio(
                    list(FORMATS), value="coco-panoptic", label="Format", elem_id="export-format"
                )
                include = gr.CheckboxGroup(
                    list(EXPORTABLE),
                    value=["corrected"],
                    label="Include images that are",
                    elem_id="export-include",
                )
                review_filter = gr.Dropdown(
                    list(REVIEW_FILTERS), value="any", label="Review", elem_id="export-review"
                )
                export_btn = gr.Button("Export", elem_id="export-btn")
            export_file = gr.File(label="Export (zip)", interactive=False, elem_id="export-file")
            export_info = gr.Markdown(elem_id="export-info")
        page_ids = gr.State([])  # image id of each gallery item
        seen = gr.State(("", ""))  # (workspace fingerprint, progress line) last sent
        revision = gr.Number(0, visible=False, elem_id="ws-revision")
        timer = gr.Timer(POLL_S)

    # ------------------------------------------------------------------ rendering

    view_out = [gallery, page_ids, page, counts, table]

    def view(queue_v: str, page_v: Any) -> tuple:
        records = ws.list_images()
        pg = wv.page_of(ws, records, queue_v or "all", page_v or 1)
        shown = ordered(records, queue_v or "all")[:TABLE_ROWS]
        where = f"showing {pg.size} ({queue_v}), page {pg.page}/{pg.pages}"
        line = f"{wv.counts_line(records)} — {where}. {wv.LEGEND}"
        table_v = {"data": wv.table_rows(shown), "headers": wv.TABLE_HEADERS}
        return pg.items, pg.ids, pg.page, line, table_v

    @guard(len(view_out))
    def show(queue_v, page_v):
        return view(queue_v, page_v)

    @guard(len(view_out))
    def show_first(queue_v):
        return view(queue_v, 1)

    @guard(len(view_out))
    def turn(queue_v, page_v, delta):
        return view(queue_v, int(page_v or 1) + delta)

    queue.change(show_first, [queue], view_out, api_name="ws_view")
    page.submit(show, [queue, page], view_out, api_visibility="private")
    prev_btn.click(lambda q, p: turn(q, p, -1), [queue, page], view_out, api_visibility="private")
    next_btn.click(lambda q, p: turn(q, p, +1), [queue, page], view_out, api_visibility="private")
    revision.change(show, [queue, page], view_out, api_visibility="private")

    # ------------------------------------------------------------------ opening / reviewing

    # A click clears open_id, then sets it: so clicking the image that was opened last (and left
    # through another tab's next / previous) still fires open_id.change. Handlers of that event
    # ignore None.
    def pick(ids: list[int], evt: gr.SelectData):
        if not isinstance(evt.index, int) or not 0 <= evt.index < len(ids):
            return gr.skip(), gr.skip(), gr.skip()
        image_id = int(ids[evt.index])
        return None, image_id, wv.details(ws.image(image_id))

    def pick_row(evt: gr.SelectData):
        row = evt.row_value  # the clicked row itself: right even after a sort in the browser
        if not row or not str(row[0]).strip().isdigit():
            return gr.skip(), gr.skip(), gr.skip()
        image_id = int(row[0])
        return None, image_id, wv.details(ws.image(image_id))

    def open_selected(image_id):
        return gr.skip() if image_id is None else int(image_id)

    pick_out = [open_id, selected, details]
    for component, fn, inputs in [(gallery, pick, [page_ids]), (table, pick_row, None)]:
        component.select(fn, inputs, pick_out, api_visibility="private").then(
            open_selected, [selected], [open_id], api_visibility="private"
        )

    review_out = [details, *view_out]

    @guard(len(review_out))
    def set_review(image_id, review, queue_v, page_v):
        if image_id is None:
            raise UserError("click an image first (or enter its id)")
        rec = ws.set_review(int(image_id), review or None)
        return (wv.details(rec), *view(queue_v, page_v))

    for button, verdict, name in [
        (accept_btn, "accepted", "ws_review_accept"),
        (changes_btn, "needs-changes", "ws_review_needs_changes"),
        (clear_btn, None, "ws_review_clear"),
    ]:
        button.click(
            lambda i, q, p, v=verdict: set_review(i, v, q, p),
            [selected, queue, page],
            review_out,
            api_name=name,
        )

    @guard(1)
    def select_id(image_id):
        if image_id is None:
            return wv.details(None)
        return wv.details(ws.image(int(image_id)))

    selected.submit(select_id, [selected], [details], api_visibility="private")

    # ------------------------------------------------------------------ predict all

    @guard(1)
    def predict_all():
        model = ctx.model  # one read: a model switch meanwhile cannot mix two models' values
        vid = model.version_id
        version = ws.model_version(vid) if vid else ws.active_model_version()
        if version is None:
            raise UserError("the app's model is not registered in the workspace; restart it")
        device = str(getattr(model.predictor, "device", "cpu"))
        job.start(version.path, version.id, model.default_score, model.default_overlap, device)
        return _progress_md(job.progress())

    @guard(1)
    def cancel_predict_all():
        job.cancel()
        return _progress_md(job.progress())

    predict_btn.click(predict_all, None, [progress], api_name="predict_all")
    cancel_btn.click(cancel_predict_all, None, [progress], api_name="cancel_predict_all")

    tick_out = [progress, seen, details, *view_out]

    def tick(last, queue_v, page_v, image_id):
        line = _progress_md(job.progress())
        records = ws.list_images(counts=False)
        fp = wv.fingerprint(records)
        out = [line if line != last[1] else gr.skip(), (fp, line)]
        if fp == last[0]:
            return (*out, gr.skip(), *(gr.skip() for _ in view_out))
        rec = next((r for r in records if image_id is not None and r.id == int(image_id)), None)
        return (*out, wv.details(rec), *view(queue_v, page_v))

    timer.tick(tick, [seen, queue, page, selected], tick_out, api_visibility="private")

    # ------------------------------------------------------------------ import / export

    import_out = [import_info, *view_out]

    @guard(len(import_out))
    def do_import(path, files, queue_v, page_v):
        msg = import_for_app(ctx.workspace, path, list(files) if files else None)  # a child
        gr.Info(msg)
        return (msg, *view(queue_v, page_v))

    import_btn.click(
        do_import,
        [import_path, import_files, queue, page],
        import_out,
        api_name="import",
        concurrency_id="model",
        concurrency_limit=1,
    )

    @guard(2)
    def do_export(fmt_v, include_v, review_v):
        report = export_dataset_zip(ws, fmt_v, Selection(tuple(include_v or ()), review_v or "any"))
        return str(report.path), report.summary()

    export_btn.click(
        do_export, [fmt, include, review_filter], [export_file, export_info], api_name="export"
    )

    refresh_btn.click(show, [queue, page], view_out, api_name="list_images")
    if Context.root_block is not None:  # draw the page when a browser opens it
        Context.root_block.load(show, [queue, page], view_out, api_visibility="private")

    def refresh() -> tuple:
        return (time.time(),)

    return WorkspaceTab(
        open_id=open_id,
        refresh=refresh,
        refresh_outputs=[revision],
        components={
            "gallery": gallery,
            "queue": queue,
            "page": page,
            "table": table,
            "progress": progress,
            "selected": selected,
            "details": details,
        },
    )
