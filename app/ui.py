"""The Gradio layout and its wiring to ``app.callbacks``; no logic of its own beyond glue."""

import logging

import gradio as gr

from app import callbacks as cb
from app import views
from app.callbacks import AppContext
from app.guard import guard
from app.render import hex_color
from app.session import Session
from maskformer.errors import UserError

log = logging.getLogger(__name__)

NEW_SEGMENT = ("(none: paint a new segment)", 0)
VIEW_H = 340  # pixels: the four image views share one height
CSS = "#query-gallery .caption-label {font-size: 11px} footer {display: none !important}"
# Ctrl+Z / Ctrl+Y (Ctrl+Shift+Z) click Undo / Redo, except while typing in a field.
HEAD = """<script>
document.addEventListener("keydown", (e) => {
  const t = e.target; if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) return;
  if (!(e.ctrlKey || e.metaKey)) return;
  const k = e.key.toLowerCase();
  const id = k === "z" && !e.shiftKey ? "undo-btn" : (k === "y" || (k === "z" && e.shiftKey))
    ? "redo-btn" : null;
  const b = id && document.getElementById(id); if (b) { e.preventDefault(); b.click(); }
});
</script>"""
HELP = """**MaskFormer Studio** — upload an image (or pick an example / a workspace image); the
model runs once and the sliders re-merge its cached outputs. Click the original image to probe a
pixel, a thumbnail to inspect a query, a legend entry or table row to select a segment. Brush: the
**green** colour adds to the selected segment, **red** removes from it (with no segment selected,
green paints a new segment of the chosen class); then press *Apply brush*. Save stores your
correction in the workspace."""


def build_ui(ctx: AppContext) -> gr.Blocks:
    """All components and events. Every event has an ``api_name`` for gradio_client."""
    ws = ctx.workspace

    def shown_meta(s: Session):
        """The classes of the model that predicted the open image: after a model switch (Train
        tab) an open image keeps its own until it is opened again."""
        return s.prediction.meta if s.prediction is not None else ctx.meta

    with gr.Blocks(title="MaskFormer Studio") as demo:
        state = gr.State(
            Session(score_threshold=ctx.default_score, overlap_threshold=ctx.default_overlap)
        )
        gr.Markdown(HELP)
        with gr.Tabs() as tabs:
            with gr.Tab("Annotate", id="annotate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        upload = gr.File(
                            label="Upload an image", file_types=["image"], elem_id="upload"
                        )
                        example = gr.Dropdown(
                            [p.name for p in ctx.examples],
                            label="Example",
                            value=ctx.examples[0].name if ctx.examples else None,
                            elem_id="example-select",
                        )
                        example_btn = gr.Button("Open example", elem_id="open-example")
                        score = gr.Slider(
                            0,
                            1,
                            ctx.default_score,
                            step=0.01,
                            label="Score threshold (object_mask_threshold)",
                            info="keep queries whose class probability is above",
                            elem_id="score-threshold",
                        )
                        overlap = gr.Slider(
                            0,
                            1,
                            ctx.default_overlap,
                            step=0.01,
                            label="Overlap threshold",
                            info="drop a query keeping less of its own mask",
                            elem_id="overlap-threshold",
                        )
                        status = gr.Markdown("No image open.", elem_id="status")
                    with gr.Column(scale=3):
                        with gr.Row():
                            original = gr.Image(
                                label="Original (click to probe a pixel)",
                                interactive=False,
                                format="png",
                                height=VIEW_H,
                                elem_id="original",
                            )
                            panoptic = gr.AnnotatedImage(
                                label="Panoptic (your segments)",
                                format="png",
                                height=VIEW_H,
                                elem_id="panoptic",
                            )
                        with gr.Row():
                            semantic = gr.AnnotatedImage(
                                label="Semantic", format="png", height=VIEW_H, elem_id="semantic"
                            )
                            instances = gr.Image(
                                label="Instances",
                                interactive=False,
                                format="png",
                                height=VIEW_H,
                                elem_id="instances",
                            )
                with gr.Accordion("Pixel probe", open=True):
                    with gr.Row():
                        probe_x = gr.Number(label="x", precision=0, elem_id="probe-x")
                        probe_y = gr.Number(label="y", precision=0, elem_id="probe-y")
                        probe_btn = gr.Button("Probe", elem_id="probe-btn")
                    probe_info = gr.Markdown(elem_id="probe-info")
                    probe_table = gr.Dataframe(
                        headers=["query", "mask prob", "class", "class score", "prob x score"],
                        interactive=False,
                        elem_id="probe-table",
                    )
                with gr.Accordion("Queries", open=True):
                    dropped_only = gr.Checkbox(
                        label="Show only the queries the merge dropped (and why)",
                        elem_id="show-dropped",
                    )
                    gallery = gr.Gallery(
                        label="Queries by score",
                        columns=10,
                        height=300,
                        allow_preview=False,
                        format="png",
                        elem_id="query-gallery",
                    )
                    with gr.Row():
                        query_num = gr.Number(label="Query", precision=0, elem_id="query-num")
                        query_btn = gr.Button("Show query", elem_id="query-btn")
                    with gr.Row():
                        query_heat = gr.Image(
                            label="Mask probability",
                            interactive=False,
                            format="png",
                            elem_id="query-heatmap",
                        )
                        with gr.Column():
                            query_top5 = gr.Label(label="Top-5 classes", elem_id="query-top5")
                            query_info = gr.Markdown(elem_id="query-info")
                with gr.Accordion("Correct", open=True):
                    segments_table = gr.Dataframe(
                        headers=views.SEGMENT_HEADERS, interactive=False, elem_id="segments-table"
                    )
                    with gr.Row():
                        segment_dd = gr.Dropdown(
                            [NEW_SEGMENT], value=0, label="Segment", elem_id="segment-select"
                        )
                        class_dd = gr.Dropdown(
                            [c.name for c in ws.categories()],
                            label="Class",
                            allow_custom_value=True,
                            elem_id="class-select",
                            info="pick one, or type a new class name",
                        )
                        new_thing = gr.Checkbox(
                            True, label="a new class is a thing", elem_id="new-thing"
                        )
                    with gr.Row():
                        relabel_btn = gr.Button("Relabel", elem_id="relabel-btn")
                        swap_btn = gr.Button("Use 2nd class", elem_id="swap-btn")
                        delete_btn = gr.Button("Delete", elem_id="delete-btn", variant="stop")
                        split_btn = gr.Button("Split parts", elem_id="split-btn")
                    with gr.Row():
                        merge_dd = gr.Dropdown(
                            [], label="Merge into the segment above", elem_id="merge-select"
                        )
                        merge_btn = gr.Button("Merge", elem_id="merge-btn")
                        dropped_dd = gr.Dropdown(
                            [], label="Dropped query", elem_id="dropped-select"
                        )
                        accept_btn = gr.Button("Accept as segment", elem_id="accept-btn")
                    editor = gr.ImageEditor(
                        label="Brush: green adds to the segment, red removes (eraser undoes)",
                        type="numpy",
                        image_mode="RGBA",
                        format="png",
                        layers=False,
                        transforms=(),
                        sources=(),
                        elem_id="brush-editor",
                        brush=gr.Brush(
                            colors=[hex_color(cb.ADD_COLOR), hex_color(cb.REMOVE_COLOR)],
                            default_color=hex_color(cb.ADD_COLOR),
                            color_mode="fixed",
                            default_size=8,
                        ),
                        eraser=gr.Eraser(default_size=8),
                    )
                    with gr.Row():
                        brush_btn = gr.Button(
                            "Apply brush", elem_id="apply-brush", variant="primary"
                        )
                        undo_btn = gr.Button("Undo", elem_id="undo-btn")
                        redo_btn = gr.Button("Redo", elem_id="redo-btn")
                        reset_btn = gr.Button("Reset to model", elem_id="reset-btn")
                        save_btn = gr.Button("Save", elem_id="save-btn", variant="primary")
            # Workspace tab (app/workspace_tab.py) -------------------------------------
            from app.workspace_tab import build_workspace_tab

            wt = build_workspace_tab(ctx)
            # end of Workspace tab --------------------------------------------------
            # Train tab (app/train_tab.py) ----------------------------------------
            from app.train_tab import build_train_tab

            build_train_tab(ctx)
            # end of Train tab ------------------------------------------------------

        # ------------------------------------------------------------------ renderers

        def class_update(s):
            return gr.Dropdown(choices=[c.name for c in ws.categories()])

        def editor_update(s):
            # The label names what the brush edits; it also tells tests the editor was redrawn.
            return gr.ImageEditor(value=cb.editor_value(ctx, s), label=views.editor_label(ws, s))

        def segment_updates(s):
            choices = views.segment_choices(ws, s)
            pan, cmap = views.panoptic_view(ws, s)
            return [
                gr.AnnotatedImage(value=pan, color_map=cmap),
                {"data": views.segment_rows(ws, s), "headers": views.SEGMENT_HEADERS},
                gr.Dropdown(choices=[NEW_SEGMENT, *choices], value=s.selected or 0),
                gr.Dropdown(choices=choices, value=None),
            ]

        def edit_values(s):
            return (
                s,
                *segment_updates(s),
                class_update(s),
                editor_update(s),
                views.status_line(ws, s),
            )

        def merge_values(s, dropped):
            sem, sem_cmap = views.semantic_view(shown_meta(s), s)
            return (
                gr.AnnotatedImage(value=sem, color_map=sem_cmap),
                views.instance_view(shown_meta(s), s),
                views.gallery(shown_meta(s), s, dropped),
                gr.Dropdown(choices=views.dropped_choices(shown_meta(s), s), value=None),
            )

        edit_out = [state, panoptic, segments_table, segment_dd, merge_dd, class_dd, editor, status]
        merge_out = [semantic, instances, gallery, dropped_dd]
        open_out = [*edit_out, original, *merge_out, tabs]
        remerge_out = [*edit_out, *merge_out]

        def open_values(s, dropped):
            return (
                *edit_values(s),
                s.image,
                *merge_values(s, dropped),
                gr.Tabs(selected="annotate"),
            )

        # ------------------------------------------------------------------ opening / merging

        @guard(len(open_out))
        def open_upload(s, path, score_v, overlap_v, dropped):
            return open_values(cb.open_upload(ctx, s, path, score_v, overlap_v), dropped)

        @guard(len(open_out))
        def open_example(s, name, score_v, overlap_v, dropped):
            return open_values(cb.open_example(ctx, s, name, score_v, overlap_v), dropped)

        @guard(len(open_out))
        def open_image(s, image_id, score_v, overlap_v, dropped):
            if image_id is None:  # the Workspace tab clears open_id before setting it
                return tuple(gr.skip() for _ in open_out)
            return open_values(cb.open_image(ctx, s, int(image_id), score_v, overlap_v), dropped)

        @guard(len(remerge_out))
        def remerge(s, score_v, overlap_v, dropped):
            s = cb.remerge(ctx, s, score_v, overlap_v)
            return (*edit_values(s), *merge_values(s, dropped))

        model = dict(concurrency_id="model", concurrency_limit=1)
        open_in = [score, overlap, dropped_only]
        upload.upload(
            open_upload, [state, upload, *open_in], open_out, api_name="open_upload", **model
        ).then(lambda: None, None, upload, api_visibility="private")
        example_btn.click(
            open_example, [state, example, *open_in], open_out, api_name="open_example", **model
        )
        wt.open_id.change(
            open_image, [state, wt.open_id, *open_in], open_out, api_name="open_image", **model
        )
        score.change(
            remerge,
            [state, score, overlap, dropped_only],
            remerge_out,
            api_name="remerge",
            trigger_mode="always_last",
        )
        overlap.change(
            remerge,
            [state, score, overlap, dropped_only],
            remerge_out,
            api_visibility="private",
            trigger_mode="always_last",
        )

        # ------------------------------------------------------------------ inspecting

        @guard(2)
        def show_gallery(s, dropped):
            return s, views.gallery(shown_meta(s), s, dropped)

        dropped_only.change(
            show_gallery, [state, dropped_only], [state, gallery], api_name="gallery"
        )

        detail_out = [query_heat, query_top5, query_info, query_num]

        @guard(len(detail_out))
        def query_detail(s, q):
            if q is None:
                raise UserError("enter a query index")
            d = views.query_detail(shown_meta(s), s, int(q))
            return d.heatmap, d.top5, d.text, int(q)

        def gallery_select(s, evt: gr.SelectData):
            if not 0 <= evt.index < len(s.gallery_queries):
                return tuple(gr.skip() for _ in detail_out)
            return query_detail(s, s.gallery_queries[evt.index])

        query_btn.click(query_detail, [state, query_num], detail_out, api_name="query_detail")
        gallery.select(gallery_select, [state], detail_out, api_visibility="private")

        probe_out = [probe_info, probe_table, probe_x, probe_y]

        @guard(len(probe_out))
        def probe(s, x, y):
            if x is None or y is None:
                raise UserError("enter x and y, or click the original image")
            text, rows = views.probe(shown_meta(s), ws, s, int(x), int(y))
            return text, rows, int(x), int(y)

        def probe_select(s, evt: gr.SelectData):
            if not evt.index:
                return tuple(gr.skip() for _ in probe_out)
            return probe(s, evt.index[0], evt.index[1])

        probe_btn.click(probe, [state, probe_x, probe_y], probe_out, api_name="probe")
        original.select(probe_select, [state], probe_out, api_visibility="private")

        # ------------------------------------------------------------------ selecting / editing

        select_out = [state, segment_dd, editor, status]

        @guard(len(select_out))
        def select_segment(s, seg):
            s = cb.select_segment(s, seg or None)
            return s, gr.Dropdown(value=s.selected or 0), editor_update(s), views.status_line(ws, s)

        def legend_select(s, evt: gr.SelectData):
            segs = s.annotation.segments if s.annotation is not None else ()
            if not isinstance(evt.index, int) or not 0 <= evt.index < len(segs):
                return tuple(gr.skip() for _ in select_out)
            return select_segment(s, segs[evt.index]["id"])

        def table_select(s, evt: gr.SelectData):
            segs = s.annotation.segments if s.annotation is not None else ()
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else None
            if row is None or not 0 <= row < len(segs):
                return tuple(gr.skip() for _ in select_out)
            return select_segment(s, segs[row]["id"])

        segment_dd.input(select_segment, [state, segment_dd], select_out, api_name="select_segment")
        panoptic.select(legend_select, [state], select_out, api_visibility="private")
        segments_table.select(table_select, [state], select_out, api_visibility="private")

        @guard(len(edit_out))
        def relabel(s, segment, class_name, new_is_thing):
            return edit_values(cb.relabel_segment(ctx, s, segment, class_name, new_is_thing))

        @guard(len(edit_out))
        def swap_class(s, segment):
            return edit_values(cb.swap_second_class(ctx, s, segment))

        @guard(len(edit_out))
        def delete(s, segment):
            return edit_values(cb.delete_segment(s, segment))

        @guard(len(edit_out))
        def split(s, segment):
            return edit_values(cb.split_segment(s, segment))

        @guard(len(edit_out))
        def merge(s, segment, other):
            return edit_values(cb.merge_segments(s, segment, other))

        @guard(len(edit_out))
        def accept_query(s, query):
            return edit_values(cb.accept_query(ctx, s, query))

        brush_out = [o for o in edit_out if o is not editor]

        @guard(len(brush_out))
        def apply_brush(s, editor_value, class_name, new_is_thing):
            values = edit_values(cb.apply_brush(ctx, s, editor_value, class_name, new_is_thing))
            return tuple(v for v, o in zip(values, edit_out) if o is not editor)

        def refresh_editor(s):
            return editor_update(s)

        @guard(len(edit_out))
        def undo(s):
            return edit_values(cb.undo(s))

        @guard(len(edit_out))
        def redo(s):
            return edit_values(cb.redo(s))

        @guard(len(edit_out))
        def reset(s):
            return edit_values(cb.reset_to_model(ctx, s))

        for button, fn, inputs in [
            (relabel_btn, relabel, [segment_dd, class_dd, new_thing]),
            (swap_btn, swap_class, [segment_dd]),
            (delete_btn, delete, [segment_dd]),
            (split_btn, split, [segment_dd]),
            (merge_btn, merge, [segment_dd, merge_dd]),
            (accept_btn, accept_query, [dropped_dd]),
            (undo_btn, undo, []),
            (redo_btn, redo, []),
            (reset_btn, reset, []),
        ]:
            button.click(fn, [state, *inputs], edit_out, api_name=fn.__name__)
        # The editor is an input here; updating it in the same event leaves gradio 6.31's editor
        # spinning, so it is re-drawn by a follow-up event.
        brush_btn.click(
            apply_brush, [state, editor, class_dd, new_thing], brush_out, api_name="apply_brush"
        ).then(refresh_editor, [state], [editor], api_visibility="private")

        @guard(1 + len(wt.refresh_outputs))
        def save(s):
            msg = cb.save(ctx, s)
            gr.Info(msg)
            return (views.status_line(ws, s), *wt.refresh())

        save_btn.click(save, [state], [status, *wt.refresh_outputs], api_name="save")

    return demo
