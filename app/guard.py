"""One decorator for every Gradio handler: a UserError becomes a warning toast, outputs stay as they were."""

import functools

import gradio as gr

from maskformer.errors import UserError


def guard(n_outputs: int):
    """Show a ``UserError`` as a warning toast and leave every output unchanged."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                gr.Warning(str(e))
                skip = tuple(gr.skip() for _ in range(n_outputs))
                return skip if n_outputs > 1 else skip[0]

        return run

    return wrap
