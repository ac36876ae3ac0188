"""``glacier-emulator make-dataset``: synthetic glaciers labelled by the reference solver."""
from __future__ import annotations

import sys

from .common import add_physics_arguments, add_vertical_arguments, load_config, physics_from_args, vertical_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-dataset", help="generate synthetic glaciers labelled by the reference solver",
        description="Draw diverse synthetic glacier geometries (valley glaciers, tributaries, ice "
        "caps, piedmont lobes) and solve each with the reference solver; one NetCDF per sample, "
        "deterministic for a seed, resumable (existing samples are skipped).",
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--samples", type=int, required=True, metavar="N")
    p.add_argument("--grid", type=int, default=64, metavar="N", help="nodes per side (default 64)")
    p.add_argument("--dx", type=float, metavar="M", help="fix the grid spacing (default: drawn from 50-200 m)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first sample (default 0)")
    p.add_argument("--kinds", nargs="+", choices=["valley", "tributary", "icecap", "piedmont"])
    p.add_argument("--tolerance", type=float, default=1e-9, help="solver tolerance (default 1e-9)")
    p.add_argument("--no-labels", action="store_true",
                   help="write the geometries only (no solve): data for physics-informed training")
    p.add_argument("--config", metavar="YAML", help="YAML with physics:, vertical:, synthetic: sections")
    add_vertical_arguments(p)
    add_physics_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..learning.dataset import make_dataset
    from ..learning.synthetic import SyntheticConfig
    from ..numerics.solver import SolverConfig

    config = load_config(args.config)
    synth = dict(config.get("synthetic") or {})
    synth["grid"] = args.grid
    if args.dx is not None:
        synth["dx"] = args.dx
    if args.kinds:
        synth["kinds"] = tuple(args.kinds)
    counts = make_dataset(
        args.output, samples=args.samples, seed=args.seed, start=args.start,
        synthetic=SyntheticConfig(**synth), physics=physics_from_args(args, config),
        vertical=vertical_from_args(args, config), solver_config=SolverConfig(tolerance=args.tolerance),
        labels=not args.no_labels,
    )
    print(f"{args.output}: {counts['written']} written, {counts['skipped']} already there, "
          f"{counts['not_converged']} not converged", file=sys.stderr)
    return 0
