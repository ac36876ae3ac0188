"""``glacier-emulator solve``: the reference Blatter-Pattyn solver on a NetCDF geometry."""
from __future__ import annotations

import sys

from .common import add_physics_arguments, add_vertical_arguments, load_config, physics_from_args, vertical_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "solve", help="solve the Blatter-Pattyn equations for a geometry (reference solver)",
        description="Minimise the Blatter-Pattyn energy for the geometry in INPUT.nc and write "
        "3-D, depth-averaged, surface and basal velocities (m/yr) to OUTPUT.nc.",
    )
    p.add_argument("input", metavar="INPUT.nc")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT.nc")
    add_vertical_arguments(p)
    p.add_argument("--tolerance", type=float, metavar="T",
                   help="relative energy change per iteration at which to stop (default 1e-9)")
    p.add_argument("--gradient-tolerance", type=float, metavar="G",
                   help="largest scaled gradient component at which to stop (default 1e-6)")
    p.add_argument("--max-iterations", type=int, metavar="K", help="iteration limit (default 5000)")
    p.add_argument("--diagonal-probes", type=int, metavar="P",
                   help="probes of the Hessian diagonal that precondition L-BFGS from the "
                   "multilevel start (default 2; 0 turns the preconditioner off)")
    p.add_argument("--float32", action="store_true", help="solve in single precision")
    p.add_argument("--config", metavar="YAML", help="YAML with physics:, vertical:, solver: sections")
    add_physics_arguments(p)
    p.set_defaults(func=run)


def solver_config_from_args(args, config: dict):
    from ..numerics.solver import SolverConfig

    values = dict(config.get("solver") or {})
    for key in ("tolerance", "gradient_tolerance", "max_iterations", "diagonal_probes"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if getattr(args, "float32", False):
        values["dtype"] = "float32"
    return SolverConfig(**values)


def run(args) -> int:
    from ..io.netcdf import read_geometry, write_velocity
    from ..numerics.solver import solve

    config = load_config(args.config)
    physics = physics_from_args(args, config)
    vertical = vertical_from_args(args, config)
    solver_config = solver_config_from_args(args, config)
    geometry = read_geometry(args.input)
    result = solve(geometry, physics=physics, vertical=vertical, config=solver_config)
    attrs = {
        "solver_converged": int(result.converged),
        "solver_iterations": result.iterations,
        "solver_tolerance": result.tolerance,
        "solver_energy": result.energy,
        "solver_gradient_norm": result.gradient_norm,
        "solver_diagonal_probes": solver_config.diagonal_probes,
        "solver_preconditioned": int(bool(result.report.get("preconditioned"))),
        "physics": repr(physics.to_dict()),
        "vertical_levels": vertical.levels,
        "vertical_spacing": vertical.spacing,
    }
    write_velocity(result.velocity, geometry, args.output, attrs=attrs)
    print(f"{args.output}: {result.summary()}", file=sys.stderr)
    return 0 if result.converged else 1
