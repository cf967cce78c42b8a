"""The ``jaxformer`` console script: ``jaxformer <command> --help``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from jaxformer import compile_cache
from jaxformer.version import __version__
from jaxformer.cli.commands import COMMANDS
from jaxformer.errors import JaxformerError


def _cache_epilog() -> str:
    """The one line of ``jaxformer --help`` that says where compiled programs are kept."""
    env = compile_cache.ENV
    try:
        where = compile_cache.cache_dir()
    except RuntimeError:                         # no home folder
        where = None
    if where is None:
        return f"the compilation cache is off ({env}={os.environ.get(env, '')}); {env}=DIR puts it in DIR"
    return f"compiled programs are cached in {where}; {env}=DIR moves it, {env}=off or --no-compile-cache turns it off"


def _add_cache_option(p: argparse.ArgumentParser, default) -> None:
    # On the top-level parser and on every command, so that it may come before or after the
    # command; the commands' default is SUPPRESS so that they do not undo a leading one.
    p.add_argument("--no-compile-cache", action="store_true", default=default,
                   help=f"do not use the persistent compilation cache (as {compile_cache.ENV}=off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxformer",
        description="Build, train, sample and look inside GPT-style transformers in JAX/Flax.",
        epilog=_cache_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jaxformer {__version__}")
    _add_cache_option(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        _add_cache_option(p, argparse.SUPPRESS)
        p.set_defaults(_run=module.run)
    return parser


def bare_set(argv: Sequence[str]) -> Optional[str]:
    """The one-line error for ``--set KEY VALUE`` written without ``=`` (argparse would only say
    ``unrecognized arguments: VALUE``), or None."""
    for i, arg in enumerate(argv[:-1]):
        key = argv[i + 1]
        if arg == "--set" and "=" not in key and not key.startswith("-"):
            value = argv[i + 2] if i + 2 < len(argv) and not argv[i + 2].startswith("-") else None
            hint = f": write --set {key}={value}" if value is not None else " (e.g. --set model.n_layer=2)"
            return f"--set {key} has no '=': it takes KEY=VALUE as one argument{hint}"
    return None


#: Exit status after Ctrl-C, wherever it lands (the shell's 128 + SIGINT).
INTERRUPTED = 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    message = bare_set(argv)
    if message is not None:
        command = next((a for a in argv if a in COMMANDS), None)
        print(f"jaxformer{' ' + command if command else ''}: error: {message}", file=sys.stderr)
        return 2
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("jaxformer: interrupted", file=sys.stderr)
        return INTERRUPTED
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if not args.no_compile_cache:
        compile_cache.enable()
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
