"""The Workspace tab (gradio glue only): the images with their status, import and export.

A stand-in with the contract the Annotate tab uses (``WorkspaceTab.open_id``, ``refresh`` and
``refresh_outputs``) until the dataset flow's Workspace tab replaces it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import callbacks as cb
from app import transfer
from app.context import AppContext
from app.guard import guard

HEADERS = ["id", "name", "size", "status", "review", "uncertainty", "classes"]


@dataclass
class WorkspaceTab:
    open_id: gr.Number  # hidden: set to an image id when the user opens an image here
    refresh: Callable[[], Any]  # updates for ``refresh_outputs``
    refresh_outputs: list[Any]


def rows(ctx: AppContext) -> list[list[Any]]:
    out = []
    for r in ctx.workspace.list_images():
        classes = ", ".join(f"{n} x{c}" for n, c in sorted(r.counts.items()))
        unc = "" if r.uncertainty is None else round(r.uncertainty, 3)
        size = f"{r.width}x{r.height}"
        out.append([r.id, r.name, size, r.status, r.review or "", unc, classes])
    return out


def build_workspace_tab(ctx: AppContext) -> WorkspaceTab:
    """Components and events of the Workspace tab (inside a ``gr.Tab``)."""
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="workspace-table")
    with gr.Row():
        refresh_btn = gr.Button("Refresh", elem_id="refresh-btn")
        image_num = gr.Number(label="Image id", precision=0, elem_id="image-num")
        open_btn = gr.Button("Open in the Annotate tab", elem_id="open-image")
    with gr.Row():
        import_path = gr.Textbox(
            label="Import from a server path",
            placeholder="folder of images, COCO panoptic folder or JSON, COCO instances JSON",
            elem_id="import-path",
        )
        import_files = gr.File(
            label="…or upload images",
            file_count="multiple",
            file_types=["image"],
            elem_id="import-files",
        )
        import_btn = gr.Button("Import", elem_id="import-btn")
    import_info = gr.Markdown(elem_id="import-info")
    with gr.Row():
        fmt = gr.Radio(
            list(transfer.FORMATS),
            value="coco-panoptic",
            label="Export format",
            elem_id="export-format",
        )
        include_pred = gr.Checkbox(
            False, label="include uncorrected predictions", elem_id="export-predicted"
        )
        export_btn = gr.Button("Export", elem_id="export-btn")
    export_file = gr.File(label="Export (zip)", interactive=False, elem_id="export-file")
    export_info = gr.Markdown(elem_id="export-info")
    open_id = gr.Number(visible=False, elem_id="workspace-open-id")

    def list_images():
        return {"data": rows(ctx), "headers": HEADERS}

    def pick_image(evt: gr.SelectData):
        data = rows(ctx)
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else None
        return data[row][0] if row is not None and 0 <= row < len(data) else gr.skip()

    @guard(2)
    def do_import(path, files):
        src = list(files) if files else path
        msg = cb.import_source(ctx, src)
        gr.Info(msg)
        return msg, list_images()

    @guard(2)
    def do_export(fmt_v, pred):
        path = cb.export(ctx, fmt_v, bool(pred))
        return str(path), f"Exported to `{path}`."

    refresh_btn.click(list_images, None, table, api_name="list_images")
    table.select(pick_image, None, image_num, api_visibility="private")
    open_btn.click(lambda i: i, image_num, open_id, api_visibility="private")
    import_btn.click(
        do_import,
        [import_path, import_files],
        [import_info, table],
        api_name="import",
        concurrency_id="model",
        concurrency_limit=1,
    )
    export_btn.click(do_export, [fmt, include_pred], [export_file, export_info], api_name="export")
    return WorkspaceTab(open_id=open_id, refresh=list_images, refresh_outputs=[table])
