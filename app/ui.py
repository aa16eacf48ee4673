"""The page: the Annotate, Workspace and Train tabs composed, and the links between them."""

from __future__ import annotations

import gradio as gr

from app import autosave
from app.annotate_tab import build_annotate_tab, css, flush_on_unload
from app.context import AppContext
from app.train_tab import build_train_tab
from app.views import model_line
from app.workspace_tab import build_workspace_tab

CSS = css()
HEAD = ""  # the canvas installs its own keyboard shortcuts (app/web/canvas_input.js)


def build_ui(ctx: AppContext) -> gr.Blocks:
    """All tabs; every event has an ``api_name`` for gradio_client."""
    with gr.Blocks(title="MaskFormer Studio", fill_width=True) as demo:
        with gr.Tabs() as tabs:
            with gr.Tab("Annotate", id="annotate", elem_id="annotate-tab") as annotate_tab:
                ann = build_annotate_tab(ctx)
            with gr.Tab("Workspace", id="workspace", elem_id="workspace-tab") as workspace_tab:
                ws = build_workspace_tab(ctx)
            with gr.Tab("Train", id="train", elem_id="train-tab") as train_tab:
                build_train_tab(ctx)

        # An image opened on the Workspace tab opens here.
        def to_annotate(image_id):
            if image_id is None:  # the Workspace tab clears it before setting it again
                return gr.skip(), gr.skip()
            return image_id, gr.Tabs(selected="annotate")

        ws.open_id.change(to_annotate, ws.open_id, [ann.open_id, tabs], api_visibility="private")

        def leave(s):
            """Leaving the Annotate tab stores its edits; the Workspace tab shows them."""
            autosave.flush(ctx, s)
            return ws.refresh()

        def store(s):
            autosave.flush(ctx, s)

        def closed(request: gr.Request):
            flush_on_unload(ctx, request)

        workspace_tab.select(leave, ann.state, ws.refresh_outputs, api_visibility="private")
        train_tab.select(store, ann.state, None, api_visibility="private")
        # the model may have changed on the Train tab
        annotate_tab.select(lambda: model_line(ctx), None, ann.model_line, api_visibility="private")
        restore, inputs, outputs = ann.restore
        demo.load(restore, inputs, outputs, api_visibility="private").then(
            *ann.inspect, api_visibility="private"
        )
        demo.load(ws.refresh, None, ws.refresh_outputs, api_visibility="private")
        demo.unload(closed)
    return demo
