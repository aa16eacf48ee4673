"""`python -m app <command>`: the workspace's own command line (the engine's is `python -m maskformer`).

Each command lives in its own module under ``app/commands/`` with ``add_arguments(parser)`` and
``run(args) -> int``; a ``UserError`` prints one line (``error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# name -> (module under app.commands, one-line help). Modules are imported only when run.
COMMANDS: dict[str, tuple[str, str]] = {
    "import": ("import_", "add images or a labelled COCO dataset to a workspace"),
    "export": ("export", "write a workspace's annotations as COCO panoptic or instances"),
    "predict-all": ("predict_all", "predict every unseen image of a workspace (a job)"),
    "status": ("status", "image counts by status and review; the most uncertain images"),
    "finetune": ("finetune", "fine-tune the model on the corrected images (the Train tab's job)"),
}


def _available() -> dict[str, tuple[str, str]]:
    """The commands whose module exists (the list grows as commands are added)."""
    out = {}
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(f"app.commands.{module}") is not None:
            out[name] = (module, help_)
    return out


def main(argv: list[str] | None = None) -> int:
    commands = _available()
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in commands.items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(f"app.commands.{module}").add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(f"app.commands.{commands[args.command][0]}")
    from maskformer.__main__ import run_command

    return run_command(module.run, args)


if __name__ == "__main__":
    sys.exit(main())
