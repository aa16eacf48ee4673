"""``python -m maskformer <command>``: each command lives in ``maskformer/commands/<name>.py``.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can fix (bad files, bad flags) are raised as ``UserError`` and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "predict": "predict",
    "train": "train",
    "evaluate": "evaluate",
    "convert": "convert",
    "synth": "synth",
    "import": "import_",
    "export": "export",
    "export-onnx": "export_onnx",
}


def main(argv: list[str] | None = None) -> int:
    from maskformer.errors import UserError

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
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
