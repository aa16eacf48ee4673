"""The Train tab: one-click fine-tune with live progress, and the model versions (gradio glue only).

``build_train_tab(ctx)`` is called inside the app's ``gr.Tabs()``; the work is in ``app.finetune``.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import pandas as pd

from app import finetune as ft
from app import model_sources as ms
from app import versions as mv
from app.finetune import Finetuner, Progress, Settings
from app.guard import guard
from app.versions import ModelSwitcher
from maskformer.errors import UserError

POLL_S = 1.0  # timer period while the tab is open
LOAD_PROGRESS = gr.Progress()  # gradio fills in the progress bar of "Load a model"
COMPARE_HEADERS = ["metric", "before (current model)", "after (fine-tuned)", "change"]
INTRO = """Fine-tune the current model on this workspace's **corrected** images. About 20 % of them
(at least one) are held out: never trained on, and scored before and after. The job computes a
**verdict** from those scores: a better model becomes the app's model; a worse one (overall, or on
any class the model already knew, beyond the noise of the held-out set) is kept as a version but
not used. The job runs in its own process: the app stays usable, and a crash there cannot stop
it. Switch between versions (or back) below without restarting."""
VERDICT_COLORS = {
    "improved": "#1e8449",
    "regression": "#c0392b",
    "no gain": "#7f8c8d",
    "unchecked": "#b9770e",
}


def _duration(s: float | None) -> str:
    if s is None:
        return "estimating…"
    s = round(s)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def progress_html(p: Progress) -> str:
    """A bar with the percentage, the iteration and the time left."""
    pct = round(100 * p.fraction)
    color = {"failed": "#c0392b", "dead": "#c0392b", "cancelled": "#7f8c8d"}.get(p.state, "#2e86de")
    text = f"{pct}%"
    if p.total and (p.iteration or p.phase == "train"):
        text += f" · iteration {p.iteration}/{p.total}"
    if p.phase == "train" and p.state == "running":
        text += f" · about {_duration(p.eta_s)} left"
    return (
        f'<div id="train-progress-bar" data-state="{p.state}" data-fraction="{p.fraction:.3f}" '
        'style="border:1px solid #ccc;border-radius:4px;height:18px;width:100%;'
        'background:#f4f4f4;overflow:hidden">'
        f'<div style="height:100%;width:{pct}%;background:{color}"></div></div>'
        f'<div style="font-size:13px;margin-top:2px">{text}</div>'
    )


def loss_frame(p: Progress) -> pd.DataFrame:
    return pd.DataFrame({"iter": [i for i, _ in p.losses], "loss": [v for _, v in p.losses]})


def compare_frame(result: dict[str, Any] | None) -> dict[str, Any]:
    """Before/after rows: overall PQ/SQ/RQ/mIoU, then PQ of each class (new ones marked), each
    with the verdict's call (better / worse / same, beyond the noise shown)."""
    rows: list[list[Any]] = []
    verdict = (result or {}).get("verdict") or {}
    if result and verdict.get("status") == "unchecked":
        rows.append(["held-out score", "too little data", "too little data", verdict["summary"]])
    elif result:
        b, a = result.get("before", {}), result.get("after", {})
        changes = {c["name"]: c for c in verdict.get("classes", [])}
        overall = verdict.get("overall") or {}
        for key in ("PQ", "SQ", "RQ", "mIoU", "pAcc"):
            call = _call(overall) if key == "PQ" else ""
            rows.append([key, mv.fmt_metric(b.get(key)), mv.fmt_metric(a.get(key)), call])
        pb, pa = b.get("per_class", {}), a.get("per_class", {})
        for name in dict.fromkeys([*pb, *pa]):
            change = changes.get(name, {})
            label = f"PQ {name}" + (" (new class)" if change.get("new") else "")
            rows.append(
                [
                    label,
                    mv.fmt_metric(pb.get(name, {}).get("PQ")),
                    mv.fmt_metric(pa.get(name, {}).get("PQ")),
                    _call(change),
                ]
            )
    return {"data": rows, "headers": COMPARE_HEADERS}


def _call(change: dict[str, Any]) -> str:
    """ "worse (-4.1, noise ±2.0)" and the like for one row of the verdict."""
    if not change:
        return ""
    if change.get("change") == "too few":
        return f"too few segments ({change.get('segments', 0)}) to judge"
    delta, noise = change.get("delta"), change.get("noise")
    if delta is None:
        return ""
    return f"{change['change']} ({delta:+.1f}, noise ±{noise:.1f})"


def verdict_html(result: dict[str, Any] | None) -> str:
    """The verdict in one coloured box (red for a regression), with its reasons."""
    verdict = (result or {}).get("verdict")
    if not verdict:
        return ""
    status = verdict["status"]
    color = VERDICT_COLORS.get(status, "#7f8c8d")
    title = {
        "improved": "Better — now the app's model",
        "regression": "Regression — not activated",
        "no gain": "No measurable gain — not activated",
        "unchecked": "Not checked — too little held-out data — not activated",
    }.get(status, status)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in verdict.get("reasons", []))
    return (
        f'<div id="train-verdict-box" data-status="{html.escape(status)}" '
        f'style="border:2px solid {color};border-radius:6px;padding:8px 12px;color:{color}">'
        f"<b>v{result.get('version_id')}: {html.escape(title)}</b>"
        f'<div style="color:inherit">{html.escape(verdict["summary"])}</div>'
        + (f"<ul>{reasons}</ul>" if reasons else "")
        + "</div>"
    )


def heldout_text(result: dict[str, Any] | None) -> str:
    """Which images were held out, and a warning about corrections saved without a change."""
    if not result:
        return ""
    names = result.get("heldout_names", [])
    lines = [
        f"**Held-out images** ({len(names)}, scored before and after, never trained on): "
        + ", ".join(f"`{n}`" for n in names)
    ]
    same_train, same_held = result.get("unchanged_train", []), result.get("unchanged_heldout", [])
    if same_train or same_held:
        lines.append(
            f"⚠️ **{len(same_train) + len(same_held)} corrected image(s) were saved without a "
            "change** (the current model already predicts exactly that): they teach the model "
            'nothing, and held out they inflate its "before" score. '
            + ", ".join(f"`{n}`" for n in [*same_train, *same_held])
        )
    return "\n\n".join(lines)


def _status_text(p: Progress) -> str:
    phase = {
        "export": "Exporting",
        "before": "Scoring the current model",
        "train": "Training",
        "after": "Scoring the new model",
        "register": "Saving",
        "done": "Done",
        "failed": "Failed",
    }.get(p.phase, p.phase.capitalize())
    if p.state == "idle":
        return p.message
    if p.state == "running":
        return f"**{phase}** — {p.message}"
    return f"**{p.state.capitalize()}** — {p.message}"


def build_train_tab(ctx: Any, device: str | None = None) -> None:
    """The Train tab's components and events; call inside ``with gr.Tabs():``.

    Args:
        ctx: the app's shared ``AppContext`` (workspace, predictor, meta, model_version_id); a
            version switch replaces its predictor and meta in place.
        device: torch device for switched-in models (default: the current predictor's).
    """
    ws = ctx.workspace
    tuner = Finetuner(ws)
    switcher = ModelSwitcher(ctx, device)
    default_device = Settings().resolved_device()
    applied: set[str] = set()  # jobs whose activated result this server switched to already
    scored: dict[tuple[int, str], dict[str, Any]] = {}  # (version, held-out dir) -> scores
    with gr.Tab("Train", id="train"):
        gr.Markdown(INTRO)
        ready_md = gr.Markdown(elem_id="train-ready")
        with gr.Row():
            iters = gr.Number(
                ft.DEFAULT_ITERS, label="Iterations", precision=0, minimum=1, elem_id="train-iters"
            )
            batch = gr.Number(
                ft.DEFAULT_BATCH, label="Batch size", precision=0, minimum=1, elem_id="train-batch"
            )
            gr.Textbox(default_device, label="Device", interactive=False, elem_id="train-device")
        with gr.Row():
            start_btn = gr.Button(
                "Fine-tune on corrected images",
                variant="primary",
                interactive=False,
                elem_id="train-start",
            )
            cancel_btn = gr.Button(
                "Cancel", variant="stop", interactive=False, elem_id="train-cancel"
            )
            resume_btn = gr.Button("Resume", interactive=False, elem_id="train-resume")
        bar = gr.HTML(elem_id="train-progress")
        status = gr.Markdown(elem_id="train-status")
        verdict_box = gr.HTML(elem_id="train-verdict")
        heldout_md = gr.Markdown(elem_id="train-heldout")
        curve = gr.LinePlot(
            pd.DataFrame({"iter": [], "loss": []}),
            x="iter",
            y="loss",
            title="Training loss",
            height=260,
            elem_id="train-loss",
        )
        result_df = gr.Dataframe(
            headers=COMPARE_HEADERS,
            interactive=False,
            label="Held-out images: before / after",
            elem_id="train-compare",
        )
        log_box = gr.Textbox(
            label="End of the job's log", lines=8, visible=False, elem_id="train-log"
        )
        gr.Markdown("### Model versions")
        model_md = gr.Markdown(ms.model_line(ctx), elem_id="model-line")
        with gr.Row():
            source_box = gr.Textbox(
                label="Load a model: checkpoint path, Hugging Face folder or hub id (owner/name)",
                placeholder="facebook/maskformer-swin-tiny-ade, /path/model_final.pkl, …",
                scale=4,
                elem_id="model-source",
            )
            load_btn = gr.Button("Load", scale=1, elem_id="model-load")
        versions = gr.Dataframe(
            headers=mv.VERSION_HEADERS, interactive=False, elem_id="versions-table"
        )
        with gr.Row():
            version_dd = gr.Dropdown([], label="Version", elem_id="version-select")
            switch_btn = gr.Button("Switch the app to this version", elem_id="version-switch")
            confirm_btn = gr.Button(
                "Switch anyway", variant="stop", visible=False, elem_id="version-confirm"
            )
            rollback_btn = gr.Button("Roll back to the parent", elem_id="version-rollback")
        version_md = gr.Markdown(elem_id="version-status")
        with gr.Row():
            cmp_a = gr.Dropdown([], label="Compare version", elem_id="compare-a")
            cmp_b = gr.Dropdown([], label="with version", elem_id="compare-b")
            cmp_btn = gr.Button("Compare", elem_id="compare-btn")
        cmp_md = gr.Markdown(elem_id="compare-note")
        cmp_df = gr.Dataframe(
            headers=["metric", "A", "B"], interactive=False, elem_id="compare-table"
        )
        seen = gr.State(None)  # what this browser tab shows already: skip unchanged updates
        timer = gr.Timer(POLL_S)

    # ------------------------------------------------------------------ rendering

    def version_updates(selected: int | None = None) -> list[Any]:
        vs = ws.model_versions()
        choices = [(mv.version_label(v), v.id) for v in reversed(vs)]
        current = ctx.model_version_id
        pick = selected if selected is not None else current
        older = next((v.parent for v in vs if v.id == pick), None)  # compare with its parent
        return [
            {"data": mv.version_rows(ws), "headers": mv.VERSION_HEADERS},
            gr.Dropdown(choices=choices, value=pick),
            gr.Dropdown(choices=choices, value=older if older is not None else pick),
            gr.Dropdown(choices=choices, value=pick),
        ]

    def follow_activation(p: Progress) -> None:
        """A finished job whose verdict activated its model: this server serves it too (once per
        job, so a later manual switch or rollback is not undone)."""
        r = p.result or {}
        if not r.get("activated") or p.job_id in applied:
            return
        applied.add(p.job_id)
        if ctx.model_version_id != r.get("version_id"):
            try:
                switcher.switch(int(r["version_id"]))
            except UserError as e:
                gr.Warning(f"the fine-tuned model could not be loaded: {e}")

    poll_out = [
        seen,
        ready_md,
        start_btn,
        cancel_btn,
        resume_btn,
        bar,
        status,
        verdict_box,
        heldout_md,
        curve,
        result_df,
        log_box,
        versions,
        version_dd,
        cmp_a,
        cmp_b,
    ]

    def poll(last: dict | None):
        p = tuner.progress()
        if p.state == "finished":
            follow_activation(p)
        ready = tuner.readiness() if p.state != "running" else None
        sig = {
            "state": p.state,
            "phase": p.phase,
            "iter": p.iteration,
            "n": len(p.losses),
            "job": p.job_id,
            "ready": ready.reason if ready else "",
            "msg": p.message,
            "versions": len(ws.model_versions()),
            "active": ctx.model_version_id,
            "result": (p.result or {}).get("version_id"),
            "eta": None if p.eta_s is None else int(p.eta_s) // 5,
        }
        if sig == last:
            return tuple(gr.skip() for _ in poll_out)
        running = p.state == "running"
        out = [
            sig,
            ready.reason if ready else "A fine-tune is running.",
            gr.Button(interactive=bool(ready and ready.ok)),
            gr.Button(interactive=running),
            gr.Button(interactive=tuner.can_resume()),
            progress_html(p),
            _status_text(p),
            verdict_html(p.result),
            heldout_text(p.result),
            loss_frame(p),
            compare_frame(p.result),
            gr.Textbox(value=p.log_tail, visible=bool(p.log_tail)),
        ]
        # the job registers its version a moment before it writes its result: a poll between
        # the two sees the new version without knowing it is the job's, so the next one looks again
        keys = ("versions", "active", "result")
        changed_versions = last is None or any(last.get(k) != sig[k] for k in keys)
        if changed_versions:
            pick = (p.result or {}).get("version_id")
            out += version_updates(pick)
        else:
            out += [gr.skip()] * 4
        return tuple(out)

    timer.tick(
        poll,
        [seen],
        poll_out,
        api_name="finetune_poll",
        show_progress="hidden",
        concurrency_limit=None,
    )

    # ------------------------------------------------------------------ actions

    @guard(2)
    def start(n_iters, n_batch):
        base_path, base_version = switcher.base_checkpoint()
        info = tuner.start(
            base_path,
            base_version,
            ctx.meta,
            Settings(
                iters=int(n_iters or ft.DEFAULT_ITERS),
                batch=int(n_batch or ft.DEFAULT_BATCH),
                device=device,
            ),
        )
        gr.Info(f"Fine-tune started (job {info.job_id}).")
        return None, f"**Starting** — job {info.job_id}"

    @guard(2)
    def cancel():
        st = tuner.cancel()
        return None, f"**{st.state.capitalize()}** — {st.message}"

    @guard(2)
    def resume():
        info = tuner.resume()
        gr.Info(f"Resuming job {info.job_id}.")
        return None, f"**Resuming** — job {info.job_id}"

    start_btn.click(
        start,
        [iters, batch],
        [seen, status],
        api_name="finetune_start",
        concurrency_id="finetune",
        concurrency_limit=1,
    )
    cancel_btn.click(
        cancel,
        None,
        [seen, status],
        api_name="finetune_cancel",
        concurrency_id="finetune",
        concurrency_limit=1,
    )
    resume_btn.click(
        resume,
        None,
        [seen, status],
        api_name="finetune_resume",
        concurrency_id="finetune",
        concurrency_limit=1,
    )

    version_out = [version_md, confirm_btn, versions, version_dd, cmp_a, cmp_b]

    def do_switch(version_id: int) -> tuple[Any, ...]:
        v = switcher.switch(int(version_id))
        return (
            (
                f"The app now uses **v{v.id}** ({v.path}). Open an image again to see its "
                "predictions."
            ),
            gr.Button(visible=False),
            *version_updates(v.id),
        )

    @guard(len(version_out))
    def switch(version_id):
        if version_id is None:
            raise UserError("choose a version first")
        why = mv.needs_confirmation(ws.model_version(int(version_id)))
        if why:
            warn = f"⚠️ **Confirm:** {why} Switch to it anyway?"
            return (warn, gr.Button(visible=True), *(gr.skip() for _ in range(4)))
        return do_switch(version_id)

    @guard(len(version_out))
    def confirm(version_id):
        if version_id is None:
            raise UserError("choose a version first")
        return do_switch(version_id)

    @guard(len(version_out))
    def rollback():
        v = switcher.rollback()
        return (
            f"Rolled back: the app now uses **v{v.id}** ({v.path}).",
            gr.Button(visible=False),
            *version_updates(v.id),
        )

    def scorer(version: Any, held: Any, classes: list[str]) -> dict[str, Any]:
        key = (version.id, str(held))
        if key not in scored:
            dev = device or str(getattr(ctx.predictor, "device", "cpu"))
            scored[key] = mv.score_version(version, held, classes, dev)
        return scored[key]

    @guard(2)
    def compare(a, b):
        if a is None or b is None:
            raise UserError("choose two versions to compare")
        va, vb = ws.model_version(int(a)), ws.model_version(int(b))
        sa, sb, what = mv.compare_scores(ws, va.id, vb.id, scorer)
        table = {
            "data": mv.compare_rows(sa, sb),
            "headers": ["metric", f"v{va.id}", f"v{vb.id}"],
        }
        return f"Scored on {what}.", table

    switch_btn.click(
        switch,
        [version_dd],
        version_out,
        api_name="switch_version",
        concurrency_id="model",
        concurrency_limit=1,
    )
    confirm_btn.click(
        confirm,
        [version_dd],
        version_out,
        api_name="switch_version_confirmed",
        concurrency_id="model",
        concurrency_limit=1,
    )
    version_dd.change(lambda: gr.Button(visible=False), None, confirm_btn, api_visibility="private")
    rollback_btn.click(
        rollback,
        None,
        version_out,
        api_name="rollback_version",
        concurrency_id="model",
        concurrency_limit=1,
    )
    cmp_btn.click(compare, [cmp_a, cmp_b], [cmp_md, cmp_df], api_name="compare_versions")

    @guard(len(version_out) + 1)
    def load_source(spec, progress=LOAD_PROGRESS):
        v = ms.load_into_app(ctx, switcher, spec, lambda f, msg: progress(f, desc=msg))
        said = f"The app now uses **v{v.id}** ({ms.version_source(v)}). Open an image again."
        # the API's order: status, versions table, ..., model line (the hidden button last)
        return (said, *version_updates(v.id), gr.Button(visible=False), ms.model_line(ctx))

    load_btn.click(
        load_source,
        [source_box],
        [version_md, *version_out[2:], confirm_btn, model_md],
        api_name="load_model_source",
        concurrency_id="model",
        concurrency_limit=1,
    )
    version_md.change(lambda: ms.model_line(ctx), None, model_md, show_progress="hidden")
