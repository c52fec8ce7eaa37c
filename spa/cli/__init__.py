"""The `spa` command: one module per subcommand, each with its `add_parser` and its `cmd_*`.

Every error a user can cause is one line on stderr and exit status 2; nothing is written unless
the whole job succeeded.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import SpaError
from ..extras import missing

# The subcommands, in the order `spa --help` lists them; each is a module of this package.
COMMANDS = ("analyze", "prune", "export", "bench", "train", "erase", "sensitivity", "finetune")


class _Parser(argparse.ArgumentParser):
    """argparse, with bad options reported in one line like every other error (usage: --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spa", description="SPA: structurally prune any ONNX model.")
    parser.add_argument("--version", action="version", version=f"spa {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "input_shape"):
        args.input_shape = dict(args.input_shape)
    try:
        return args.run(args)
    except SpaError as e:
        print(f"spa: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `spa analyze ... | head`)
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("spa: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # a missing extra, or a bug of ours: one line, and the way to see more
        if isinstance(e, ImportError) and missing(e):
            print(f"spa: error: {missing(e)}", file=sys.stderr)
            return 2
        if os.environ.get("SPA_DEBUG"):
            raise
        print(f"spa: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(set SPA_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1

