"""The canvas's requests: what each custom event of the Annotate canvas does (no gradio here).

The browser (``app/web/canvas_sync.js``) sends ``{"op", "nonce", ...}`` as the canvas's value
and triggers the event ``op``; gradio_client users call the same events by their api names with
the same dict. Each handler edits the session and says which segment the browser should select;
``app.annotate_tab`` turns the session into the canvas's (or the inspector's) new value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app import callbacks as cb
from app import inspector, views
from app.context import AppContext
from app.editing import EditError
from app.session import Session
from app.views import KEEP

Request = dict[str, Any]


def _num(req: Request, key: str) -> float:
    try:
        return float(req[key])
    except (KeyError, TypeError, ValueError):
        raise EditError(f"the request needs a number '{key}'") from None


def _select(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.select_at(s, _num(req, "x"), _num(req, "y"))
    return s.selected


def _relabel(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.relabel_segment(ctx, s, req.get("segment"), req.get("cls"), bool(req.get("thing", True)))
    return s.selected


def _delete(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.delete_segment(s, req.get("segment"))
    return None


def _merge(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.merge_segments(s, req.get("segment"), req.get("other"))
    return s.selected


def _split(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.split_segment(s, req.get("segment"))
    return s.selected


def _swap(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.swap_second_class(ctx, s, req.get("segment"))
    return s.selected


def _accept(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.accept_query(ctx, s, req.get("query"))
    return s.selected


def _brush(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.brush(
        ctx,
        s,
        req.get("points"),
        _num(req, "width"),
        str(req.get("mode", "add")),
        req.get("segment"),
        req.get("cls"),
    )
    return s.selected


def _polygon(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.polygon(
        ctx, s, req.get("points"), str(req.get("mode", "add")), req.get("segment"), req.get("cls")
    )
    return s.selected


def _undo(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.undo(s)
    return KEEP


def _redo(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.redo(s)
    return KEEP


def _reset(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.reset_to_model(ctx, s)
    return None


def _save(ctx: AppContext, s: Session, req: Request) -> Any:
    cb.save(ctx, s)
    return KEEP


def _resend(ctx: AppContext, s: Session, req: Request) -> Any:
    views.resend(s)
    return KEEP


def _add_class(ctx: AppContext, s: Session, req: Request) -> Any:
    cat_id, _, name = cb.category_for(ctx, req.get("cls"), bool(req.get("thing", True)))
    s.touch(f"Class for new segments: {name}.")
    req["_cls"] = cat_id
    return KEEP


# op -> handler returning the selection for the browser; each is one named API endpoint
CANVAS_OPS: dict[str, Callable[[AppContext, Session, Request], Any]] = {
    "select_at": _select,
    "relabel": _relabel,
    "delete": _delete,
    "merge": _merge,
    "split": _split,
    "swap_class": _swap,
    "accept_query": _accept,
    "brush": _brush,
    "polygon": _polygon,
    "undo": _undo,
    "redo": _redo,
    "reset": _reset,
    "save": _save,
    "resend": _resend,
    "add_class": _add_class,
}
EDIT_OPS = frozenset(CANVAS_OPS) - {"select_at", "resend", "add_class", "save"}


def show_query(ctx: AppContext, s: Session, req: Request) -> str:
    q = int(_num(req, "query"))
    inspector.query_detail(ctx, s, q)  # fails before the state changes
    s.inspector["query"] = q
    return "query"


def probe(ctx: AppContext, s: Session, req: Request) -> str:
    x, y = _num(req, "x"), _num(req, "y")
    inspector.probe(ctx, s, x, y)
    s.inspector["probe"] = (x, y)
    return "probe"


def show_views(ctx: AppContext, s: Session, req: Request) -> str:
    return "views"


def resend_inspector(ctx: AppContext, s: Session, req: Request) -> str | None:
    s.sent = {k for k in s.sent if not k.startswith(("th", "hm"))}
    return None


# op -> handler returning the inspector tab to show
INSPECTOR_OPS: dict[str, Callable[[AppContext, Session, Request], str | None]] = {
    "show_query": show_query,
    "probe": probe,
    "show_views": show_views,
    "resend_inspector": resend_inspector,
}
