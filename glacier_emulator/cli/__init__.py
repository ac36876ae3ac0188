"""The ``glacier-emulator`` command: argparse subcommands that parse, call the library, report.

Each subcommand lives in its own module here and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed namespace, returning an exit code). Errors meant
for people (:class:`~glacier_emulator.fields.InputError`, ``ValueError`` from configuration,
``LookupError``, ``OSError``) are printed as one line on stderr with exit code 2, never as a
traceback; set ``GLACIER_EMULATOR_DEBUG=1`` to see the traceback instead. Warnings (e.g. the
emulator's :class:`~glacier_emulator.emulator.ExtentWarning`) are printed as one line too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = ("solve", "ismip_hom", "predict", "models", "run", "plot", "dataset", "train")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="glacier-emulator",
        description="Fast, verified ice-flow velocities: Blatter-Pattyn solver, U-Net emulator, "
        "and a mass-conserving time stepper. Units: m, yr, MPa.",
    )
    parser.add_argument("--version", action="version", version=f"glacier-emulator {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:  # a subcommand not written yet
            if exc.name and exc.name.endswith(f"cli.{name}"):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv=None) -> int:
    from ..fields import InputError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import warnings

    # warnings meant for people (e.g. ExtentWarning) as one line, like the errors; for this
    # command only (main may be called from Python, whose later warnings keep their format)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = (lambda message, category, *rest, **kw:
                              f"glacier-emulator {args.command}: warning: {message}\n")
    try:
        return int(args.func(args) or 0)
    except (InputError, ValueError, LookupError, OSError) as exc:
        if os.environ.get("GLACIER_EMULATOR_DEBUG"):
            raise
        print(f"glacier-emulator {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glacier-emulator {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
