"""The ``jaxformer`` console script: ``jaxformer <command> --help``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from . import __version__
from .commands import COMMANDS
from .errors import JaxformerError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxformer",
        description="Build, train, sample and look inside GPT-style transformers in JAX/Flax.")
    parser.add_argument("--version", action="version", version=f"jaxformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


#: Exit status after Ctrl-C, wherever it lands (the shell's 128 + SIGINT).
INTERRUPTED = 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("jaxformer: interrupted", file=sys.stderr)
        return INTERRUPTED
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except JaxformerError as e:
        print(f"jaxformer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxformer {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`jaxformer sample ... | head`): not an error of ours. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):   # stdout without a file descriptor
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
