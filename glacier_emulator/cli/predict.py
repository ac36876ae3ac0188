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
    add_symmetrise_argument(parser)
    add_coarsen_argument(parser)
    add_refine_argument(parser)
    parser.set_defaults(func=run)


def add_coarsen_argument(parser) -> None:
    from ..constants import COARSEN_TARGET_CELLS, EXAMPLE_EXTENT_ERRORS, WIDE_ICE_CELLS

    as_given = dict(EXAMPLE_EXTENT_ERRORS.rel_l2_ubar)[50.0]
    parser.add_argument(
        "--coarsen", choices=("auto", "1", "2", "4", "8"), metavar="auto|N",
        help="predict on every N-th node and interpolate back; auto: for ice wider than "
        f"{WIDE_ICE_CELLS} cells (where the emulator's error grows: the bundled example at 50 m, "
        f"{as_given:.2f} as given, {EXAMPLE_EXTENT_ERRORS.coarsen_auto_at_50m:.2f} so), as coarse "
        f"as brings it to {COARSEN_TARGET_CELLS} cells within the model's spacing range (default: "
        "the grid as given)",
    )


def add_refine_argument(parser) -> None:
    parser.add_argument(
        "--refine", type=int, metavar="N",
        help="after the network, at most N iterations of the reference solver started from its "
        "prediction: slower, closer to the Blatter-Pattyn solution (the model cards' refine rows; "
        "best with a 3-D model such as velocity3d-prior; default 0, the network alone)",
    )


def add_symmetrise_argument(parser) -> None:
    from ..constants import SYMMETRISE_MODES

    parser.add_argument(
        "--symmetrise", choices=SYMMETRISE_MODES, metavar="MODE",
        help="average the network over these grid symmetries: dihedral (all 8 rotations and "
        "mirrors), xy (both mirrors, 4), x (2) or none (1); fewer is faster and less accurate "
        "(default: the model's own, shown by `glacier-emulator models`)",
    )


def resolve_model(spec: str | None, symmetrise: str | None = None, coarsen: str | None = None,
                  refine: int | None = None):
    """The emulator named by ``--model``: a path to a ``.keras`` file, a shipped name, or None
    (the default model); ``symmetrise`` overrides the model's symmetry averaging, ``coarsen``
    (``--coarsen``: "auto" or a number) sets its coarse-grid prediction, ``refine``
    (``--refine``) its solver iterations after the network."""
    from ..emulator import Emulator, NoPretrainedModelError
    from ..fields import InputError

    try:
        if spec is None:
            emulator = Emulator.pretrained()
        elif spec.endswith(".keras") or Path(spec).exists():
            emulator = Emulator.load(spec)
        else:
            emulator = Emulator.pretrained(spec)
    except NoPretrainedModelError as exc:
        # One line on stderr, like every other error meant for people (the CLI's handler
        # catches InputError; LookupError is not among the types it reports).
        raise InputError(str(exc)) from None
    if symmetrise is not None:
        emulator = emulator.with_symmetrise(symmetrise)
    if coarsen is not None:
        emulator = emulator.with_coarsen(coarsen if coarsen == "auto" else int(coarsen))
    if refine is not None:
        try:
            emulator = emulator.with_refine(refine)
        except ValueError as exc:
            raise InputError(f"--refine: {exc}") from None
    return emulator


def run(args: argparse.Namespace) -> int:
    from ..fields import InputError

    emulator = resolve_model(args.model, args.symmetrise, args.coarsen, args.refine)
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
        "emulator_symmetrise": emulator.model.symmetrise,
        "emulator_coarsening": 2 ** emulator.coarsening_levels(geometry, emulator.coarsen),
        "emulator_refine_iterations": emulator.refine,
        **({"emulator_refine_start": emulator.refine_start_description()} if emulator.refine else {}),
        "physics": repr(meta.physics.to_dict()),
        "vertical_levels": meta.vertical.levels,
        "vertical_spacing": meta.vertical.spacing,
    }
    write_velocity(velocity, geometry, args.output, attrs=attrs)
    ny, nx = geometry.shape
    refined = f", refined by at most {emulator.refine} solver iterations" if emulator.refine else ""
    print(
        f"{args.output}: velocity of {ny} x {nx} grid from emulator {emulator.name!r} in "
        f"{elapsed:.2f} s{refined} (max speed {float(velocity.speed.max()):.4g} m/yr)",
        file=sys.stderr,
    )
    return 0
