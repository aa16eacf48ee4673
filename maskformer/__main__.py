"""``python -m maskformer <command>``: each command lives in ``maskformer/commands/<name>.py``.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can fix (bad files, bad flags) are raised as ``UserError`` and printed as one line;
so are the errors the machine or a hostile file causes (a full disk, a name too long, input nested
too deeply, memory exhausted). ``MASKFORMER_DEBUG=1`` shows the traceback of those instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable

COMMANDS = {
    "predict": "predict",
    "train": "train",
    "evaluate": "evaluate",
    "convert": "convert",
    "synth": "synth",
    "export-onnx": "export_onnx",
}


def main(argv: list[str] | None = None) -> int:

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m maskformer", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Only the chosen command's module is imported: `python -m maskformer synth` must not pay for torch
    # model code it does not use, and a broken optional dependency breaks only its own command.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, module in COMMANDS.items():
        if name == chosen:
            mod = importlib.import_module(f"maskformer.commands.{module}")
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
        else:
            sub.add_parser(name, help=f"see `python -m maskformer {name} --help`")
    args = parser.parse_args(argv)
    return run_command(args._run, args)


def run_command(run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """``run(args)`` with the errors a user or the machine causes printed as one line (exit 2).

    Shared by ``python -m maskformer`` and ``python -m app``.
    """
    from maskformer.errors import UserError

    try:
        return int(run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, RecursionError, MemoryError) as e:
        if os.environ.get("MASKFORMER_DEBUG"):
            raise
        print(f"error: {environment_error(e)}", file=sys.stderr)
        return 2


def environment_error(e: BaseException) -> str:
    """One line for an error of the machine or of an input's shape, not of the program."""
    if isinstance(e, RecursionError):
        return "the input is nested too deeply to read (a hostile or broken file?)"
    if isinstance(e, MemoryError):
        return "out of memory (the input is too large for this machine)"
    assert isinstance(e, OSError)
    if e.errno == errno.ENOSPC:
        return f"disk full: cannot write {e.filename}" if e.filename else "disk full"
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


if __name__ == "__main__":
    sys.exit(main())
