"""``glacier-emulator predict INPUT.nc -o OUTPUT.nc [--model NAME|PATH]``: emulate the velocity.

Reads the glacier from a NetCDF file (:func:`glacier_emulator.io.netcdf.read_geometry`), runs the
emulator, and writes the same velocity variables as ``glacier-emulator solve``
(:func:`glacier_emulator.io.netcdf.write_velocity`). Without ``--model`` it uses the shipped
default model (``glacier-emulator models`` lists them); while none ships it stops with one line
saying so.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="emulate the ice velocity of a glacier in a NetCDF file",
        description="Emulate the Blatter-Pattyn velocity (m/yr) of the glacier in INPUT.nc with a "
        "trained U-Net and write it to OUTPUT.nc (same variables as `solve`).",
    )
    parser.add_argument("input", type=Path, metavar="INPUT.nc", help="geometry: thk and usurf or topg on x, y")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT.nc", help="file to write")
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME|PATH",
        help="a shipped model's name (see `glacier-emulator models`) or a .keras file with its "
        ".json metadata next to it; default: the shipped default model",
    )
    parser.set_defaults(func=run)


def resolve_model(spec: str | None):
    """The emulator named by ``--model``: a path to a ``.keras`` file, a shipped name, or None."""
    from ..emulator import Emulator, NoPretrainedModelError
    from ..fields import InputError

    try:
        if spec is None:
            return Emulator.pretrained()
        if spec.endswith(".keras") or Path(spec).exists():
            return Emulator.load(spec)
        return Emulator.pretrained(spec)
    except NoPretrainedModelError as exc:
        # One line on stderr, like every other error meant for people (the CLI's handler
        # catches InputError; LookupError is not among the types it reports).
        raise InputError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..fields import InputError

    emulator = resolve_model(args.model)
    from ..io.netcdf import read_geometry, write_velocity

    geometry = read_geometry(args.input)
    start = time.perf_counter()
    try:
        velocity = emulator.predict_geometry(geometry)
    except InputError as exc:
        raise InputError(f"{args.input}: {exc}") from None
    elapsed = time.perf_counter() - start
    meta = emulator.metadata
    attrs = {
        "emulator": meta.name,
        "emulator_version": meta.version,
        "emulator_created": meta.created,
        "physics": repr(meta.physics.to_dict()),
        "vertical_levels": meta.vertical.levels,
        "vertical_spacing": meta.vertical.spacing,
    }
    write_velocity(velocity, geometry, args.output, attrs=attrs)
    ny, nx = geometry.shape
    print(
        f"{args.output}: velocity of {ny} x {nx} grid from emulator {emulator.name!r} in "
        f"{elapsed:.2f} s (max speed {float(velocity.speed.max()):.4g} m/yr)",
        file=sys.stderr,
    )
    return 0
