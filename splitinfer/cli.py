"""`splitinfer` command line: a thin dispatcher; each subcommand lives in its own module.

A subcommand module exposes `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`, and keeps
heavy imports (torch, transformers) inside `main`, so `splitinfer --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from splitinfer.errors import UserError

COMMANDS = {
    "generate": "splitinfer.commands.generate",
    "serve": "splitinfer.transport.serve_cmd",
    "keygen": "splitinfer.transport.keygen_cmd",
    "sweep": "splitinfer.commands.sweep",
    "report": "splitinfer.commands.report",
    "recommend": "splitinfer.commands.recommend",
    "plan": "splitinfer.commands.plan",
    "calibrate": "splitinfer.commands.calibrate",
    "eval": "splitinfer.commands.eval",
}


class CliError(UserError):
    """A user-facing error of the command line: printed as one line, exit status 2, no traceback."""


def is_user_error(e: BaseException) -> bool:
    """Bad input rather than a bug: a `UserError` (the rule), or, until every module's errors derive from
    it, a `ValueError` / `FileNotFoundError` that splitinfer defines (CodecError, EmptyCorpusError, ...) or
    raises itself (`raise ValueError(...)` in a splitinfer module). One raised inside torch, numpy, ... is
    a bug and keeps its traceback."""
    if isinstance(e, UserError):
        return True
    if not isinstance(e, ValueError | FileNotFoundError):
        return False
    if type(e).__module__.startswith("splitinfer"):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("splitinfer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitinfer",
        description="Split inference of language models: cut, compress, ship over ZeroMQ, measure.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_path in COMMANDS.items():
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._module.main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: keep the traceback
        # Bad input: one clear line (the message names the value, what is allowed, what to do).
        print(f"splitinfer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
