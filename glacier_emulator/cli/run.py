"""``glacier-emulator run [INPUT.nc] -o OUTPUT.nc --years N``: a transient glacier run.

Evolves the thickness with the mass-conserving stepper (:mod:`glacier_emulator.dynamics`) and a
velocity provider (the emulator, the reference solver or the SIA), and writes a CF-1.8 time
series (``thk``, ``usurf``, ``ubar``, ``vbar``, ``velbar_mag``, ``smb`` and the volume budget) with
the safe writer after every save, so that an interrupted run leaves the last complete file.

Without INPUT the bundled example glacier (the IGM side-by-side case) runs with its config
(``glacier_emulator/data/example_run.yaml``). Settings come from, in increasing priority: the
defaults (or the example's config, or the restart file's stored config), ``--config run.yaml``
(the keys of :class:`~glacier_emulator.dynamics.stepper.RunConfig`), then the flags.

``--check-every Y`` measures the run's velocity against the reference solver on the glacier the
run has reached, every Y years (:class:`~glacier_emulator.dynamics.check.VelocityCheck`): the
error on the user's own glacier rather than the model card's held-out one, at the cost of one
converged solve per check; the run itself is unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import add_physics_arguments, physics_from_args
from .predict import add_coarsen_argument, add_refine_argument, add_symmetrise_argument

SMB_HELP = (
    "surface mass balance: a number (uniform, m ice/yr), 'ela' (the IGM example: ELA 2300 m, "
    "gradients 0.009/0.005 yr-1, max 2 m/yr), 'input' (the input file's smb field), 'none', or a "
    "file: YAML (an SMB config mapping), CSV (time,smb: a uniform series) or NetCDF ('smb' on y, x "
    "or on time, y, x)"
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="evolve a glacier in time (emulator, solver or SIA velocities) and write a time series",
        description="Run a glacier forward in time with a mass-conserving upwind finite-volume "
        "stepper and write thk, usurf, velocities, smb and the volume budget to OUTPUT.nc every "
        "--save-every years. Without INPUT.nc the bundled example glacier (the IGM side-by-side "
        "case) is run.",
    )
    p.add_argument("input", nargs="?", metavar="INPUT.nc",
                   help="geometry: thk and topg or usurf on x, y (default: the bundled example)")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT.nc", help="time series to write")
    p.add_argument("--years", type=float, metavar="N", help="length of the run in years")
    p.add_argument("--velocity", choices=("emulator", "solver", "sia"),
                   help="velocity provider (default: the emulator if a pretrained model exists, else sia)")
    p.add_argument("--model", metavar="NAME|PATH", help="emulator: a shipped model name or a .keras file")
    add_symmetrise_argument(p)
    add_coarsen_argument(p)
    add_refine_argument(p)
    p.add_argument("--carry-correction", action="store_true",
                   help="with --refine: start each step's refinement from the network's prediction "
                   "plus the previous step's correction (closer to the solver-driven run where the "
                   "ice retreats, further where it advances; README)")
    p.add_argument("--smb", metavar="SPEC", help=SMB_HELP)
    p.add_argument("--save-every", type=float, metavar="Y", help="years between saved records")
    p.add_argument("--cfl", type=float, metavar="C", help="Courant number (default 0.3)")
    p.add_argument("--dt-max", type=float, metavar="DT", help="largest time step in years (default 1)")
    p.add_argument("--velocity-every", type=int, metavar="K",
                   help="recompute the velocity every K steps (default 1)")
    p.add_argument("--start-time", type=float, metavar="YEAR", help="model year at the start")
    p.add_argument("--limiter", action="store_true", default=None,
                   help="second-order minmod reconstruction of the face thickness")
    p.add_argument("--check-domain-edges", action="store_true", default=None,
                   help="stop if the ice touches the domain edge at the start")
    p.add_argument("--check-every", type=float, metavar="Y",
                   help="every Y years (a multiple of --save-every) solve the glacier the run has "
                   "reached with the reference solver and store the difference of the run's "
                   "velocity from it (velocity_check_error: relative L2 of ubar on the ice); the "
                   "run is unchanged; each check costs one converged solve")
    p.add_argument("--config", metavar="run.yaml", help="YAML run config (RunConfig keys)")
    p.add_argument("--restart", metavar="OUTPUT.nc",
                   help="continue from the last record of this output file (the new file holds "
                   "its records followed by the new ones)")
    p.add_argument("--single-precision", action="store_true",
                   help="store the fields as float32 (a restart from such a file is not bitwise exact)")
    add_physics_arguments(p)
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------- settings
def _stored_config(path) -> dict:
    """The run config stored in an earlier output file (``run_config`` attribute), or {}."""
    import xarray as xr

    with xr.open_dataset(path, decode_times=False) as ds:
        text = ds.attrs.get("run_config")
    if not text:
        return {}
    try:
        return dict(json.loads(text))
    except (TypeError, ValueError):
        return {}


def build_config(args):
    """The RunConfig of this run: base, then ``--config``, then flags."""
    from ..dynamics.stepper import RunConfig

    if args.restart:
        if not Path(args.restart).is_file():
            raise FileNotFoundError(f"{args.restart}: restart file not found")
        config = RunConfig.from_dict(_stored_config(args.restart))
    elif args.input is None:
        from ..data import example_config

        config = example_config()
    else:
        config = RunConfig()
    if args.config:
        config = RunConfig.from_yaml(args.config)
    if args.years is not None and args.years < 0:
        raise ValueError(f"--years must be >= 0. Received: {args.years!r}")
    return config.replace(
        years=args.years, velocity=args.velocity, save_every=args.save_every, cfl=args.cfl,
        dt_max=args.dt_max, velocity_every=args.velocity_every, start_time=args.start_time,
        limiter=args.limiter, check_domain_edges=args.check_domain_edges,
        check_every=args.check_every,
    )


def smb_config_from_spec(spec: str):
    """An SMB config (dict, number, 'input' or None) from the ``--smb`` argument."""
    from ..data import example_config

    text = str(spec).strip()
    key = text.lower()
    if key == "none":
        return {"type": "none"}
    if key == "input":
        return "input"
    if key == "ela":
        return example_config().smb
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(
            f"--smb {text}: not a number, 'ela', 'input', 'none' or an existing file"
        )
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
        if isinstance(data, dict) and "smb" in data and "type" not in data:
            data = data["smb"]
        if not isinstance(data, (dict, int, float)):
            raise ValueError(f"{path}: expected an SMB config mapping with a 'type'")
        return data
    if suffix in (".csv", ".txt"):
        return {"type": "timeseries", "file": str(path)}
    import xarray as xr

    with xr.open_dataset(path, decode_times=False) as ds:
        if "smb" not in ds:
            raise ValueError(f"{path}: no variable 'smb'; found {sorted(map(str, ds.data_vars))}")
        has_time = "time" in ds["smb"].dims
    return {"type": "timeseries" if has_time else "field", "file": str(path)}


def resolve_smb(config, geometry, *, note):
    """The SMB model: the config's, or the input file's field, or none (with a note)."""
    from ..dynamics.smb import FieldSMB, smb_from_config

    spec = config.smb
    if spec == "input":
        if geometry is None or geometry.smb is None:
            raise ValueError("--smb input: the input file has no smb field")
        return FieldSMB(geometry.smb)
    if spec is not None:
        return smb_from_config(spec)
    if geometry is not None and geometry.smb is not None:
        note("using the input file's smb field")
        return FieldSMB(geometry.smb)
    note("no surface mass balance given (--smb); running with zero SMB")
    return None


def _accuracy_note(emulator) -> str:
    """The model card's held-out error of ubar, and the default-physics set's where measured."""
    from ..emulator import DEFAULT_PHYSICS_SET, held_out_ubar_error

    accuracy, refine = emulator.metadata.accuracy, emulator.refine
    err = held_out_ubar_error(accuracy, refine).get("median")
    if err is None:
        return ""
    default = held_out_ubar_error(accuracy, refine, test_set=DEFAULT_PHYSICS_SET).get("median")
    also = "" if default is None else f"; {default:.3f} on the default physics"
    if refine:
        return (f" (held-out relative error of ubar of a single prediction with refine "
                f"{refine}: {err:.3f}, median{also})")
    return f" (held-out relative error of ubar {err:.3f}, median{also})"


def resolve_provider(config, physics, args, *, note):
    """The velocity provider; the default is the emulator, falling back to the SIA."""
    from ..dynamics.providers import EmulatorProvider, SIAProvider, make_provider

    name = config.velocity
    emulator_options = [flag for flag, value in (
        ("--model", args.model), ("--symmetrise", args.symmetrise), ("--coarsen", args.coarsen),
        ("--refine", args.refine), ("--carry-correction", getattr(args, "carry_correction", False)),
    ) if value]
    if name in ("solver", "sia") and emulator_options:
        raise ValueError(f"{', '.join(emulator_options)} set the emulator, but this run's velocity "
                         f"is the {name} (--velocity or the configuration): drop them or use "
                         "--velocity emulator")
    if name is None and emulator_options:
        name = "emulator"  # asking for a model (or its symmetry averaging) means the emulator
    if name is None:
        # the shipped default emulator; an installation without a usable one falls back to the SIA
        try:
            from ..emulator import Emulator

            emulator = Emulator.pretrained()
        except Exception:  # noqa: BLE001 -- any failure means: no usable pretrained model
            note("no pretrained emulator available; using the shallow-ice approximation "
                 "(--velocity sia) for the velocity")
            return SIAProvider(physics)
        note(f"velocity: the pretrained emulator {emulator.name}{_accuracy_note(emulator)}; "
             "--velocity solver for the reference solver")
        return EmulatorProvider(emulator)
    if name == "emulator":
        from .predict import resolve_model

        emulator = resolve_model(args.model, args.symmetrise, args.coarsen, args.refine)
        carry = bool(getattr(args, "carry_correction", False))
        if emulator.refine:
            profile = emulator.refine_start_description(forward=True)
            start = (f"the network's prediction ({profile}) plus the previous step's correction"
                     if carry else f"the network's prediction ({profile})")
            note(f"velocity: the emulator {emulator.name}{_accuracy_note(emulator)}, refined by at "
                 f"most {emulator.refine} reference-solver iterations at each velocity evaluation "
                 f"(each starting from {start}, with the previous step's L-BFGS memory)")
        if not emulator.metadata.forward_runs:
            note(f"warning: the emulator {emulator.name} is marked not for forward runs (it failed "
                 "the forward test of its model card: the ice may pile up until the run stops); "
                 "prefer the default model, --velocity sia or --velocity solver")
        return EmulatorProvider(emulator, carry_correction=carry)
    if name == "solver":
        return solver_provider(config, physics)
    return make_provider(name, physics)


def solver_provider(config, physics):
    """The reference solver with the run's levels and solver settings."""
    from ..constants import VerticalDiscretisation
    from ..dynamics.providers import make_provider
    from ..numerics.solver import SolverConfig

    vertical = VerticalDiscretisation(**(config.vertical or {}))
    solver_config = SolverConfig(**(config.solver or {}))
    return make_provider("solver", physics, vertical=vertical, solver_config=solver_config)


def resolve_check(config, physics, provider, *, note):
    """The velocity check of ``--check-every`` (None without it)."""
    from ..dynamics.check import VelocityCheck

    if config.check_every is None:
        return None
    if getattr(provider, "name", None) == "solver":
        raise ValueError("--check-every compares the run's velocity with the reference solver's; "
                         "this run already uses the solver (--velocity solver)")
    note(f"checking the velocity against the reference solver every {config.check_every:g} "
         "years (one converged solve each; stored as velocity_check_error)")
    return VelocityCheck(solver_provider(config, physics), every=float(config.check_every))


# ------------------------------------------------------------------------------- running
def _progress(total: float, start: float, *, label: str):
    """A tqdm bar over model years (disabled when stderr is not a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=round(total, 6), unit="yr", desc=label, disable=not sys.stderr.isatty(),
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} yr [{elapsed}<{remaining}]")
    state = {"t": start}

    def on_step(stepper):
        bar.update(stepper.t - state["t"])
        state["t"] = stepper.t

    return bar, on_step


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import xarray as xr

    from ..dynamics.check import CHECK_DIAGNOSTICS, VelocityCheck
    from ..dynamics.stepper import Stepper
    from ..io.netcdf import safe_write

    def note(message: str) -> None:
        print(f"glacier-emulator run: {message}", file=sys.stderr)

    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: cannot write, directory '{output.parent}' does not exist")
    if getattr(args, "carry_correction", False) and not args.refine:
        raise ValueError("--carry-correction needs --refine N (it carries the solver's correction "
                         "of the network from one time step to the next)")
    config = build_config(args)
    if args.smb is not None:
        config = config.replace(smb=smb_config_from_spec(args.smb))
    physics = physics_from_args(args, {"physics": config.physics})
    config = config.replace(physics=physics.to_dict())  # stored, so that a restart repeats it
    if args.restart:
        if args.input is not None:
            raise ValueError("give either INPUT.nc or --restart, not both")
        geometry = None
    elif args.input is not None:
        from ..io.netcdf import read_geometry

        geometry = read_geometry(args.input)
    else:
        from ..data import load_example_geometry

        geometry = load_example_geometry()
        note(f"no INPUT.nc: running the bundled example glacier ({geometry.shape[0]} x "
             f"{geometry.shape[1]} nodes, {geometry.dx:g} m)")
    provider = resolve_provider(config, physics, args, note=note)
    config = config.replace(velocity=getattr(provider, "name", None))  # what a restart reuses
    check = resolve_check(config, physics, provider, note=note)
    stored = {"run_config": json.dumps(config.to_dict()), "physics": json.dumps(physics.to_dict())}
    previous = None
    if args.restart:
        # a fixed field (the input's) is recovered from the file by Stepper.from_output
        smb_model = None if config.smb in (None, "input") else resolve_smb(config, None, note=note)
        stepper = Stepper.from_output(args.restart, provider, smb_model, check=check,
                                      **config.stepper_settings())
        with xr.open_dataset(args.restart,
                             decode_times=xr.coders.CFDatetimeCoder(use_cftime=True)) as ds:
            previous = ds.load()
        previous = previous.isel(time=previous["year"].values < stepper.t - 1e-9)
    else:
        smb_model = resolve_smb(config, geometry, note=note)
        stepper = Stepper.from_config(geometry, provider, config, smb=smb_model, check=check)
    start = stepper.t
    end = start + float(config.years)

    def on_save(ds):
        attrs = {**ds.attrs, **stored}
        if previous is not None and previous.sizes.get("time", 0):
            # a restart may add or drop the velocity check: its records hold NaN where none ran
            for name in CHECK_DIAGNOSTICS:
                for a, b in ((previous, ds), (ds, previous)):
                    if name in a and name not in b:
                        b[name] = xr.full_like(b["volume"], np.nan).assign_attrs(a[name].attrs)
            new = ds
            ds = xr.concat([previous, new], dim="time", data_vars="minimal", coords="minimal",
                           compat="override", join="override", combine_attrs="drop")
            for name, variable in new.variables.items():  # units and names: the stepper's
                ds.variables[name].attrs = dict(variable.attrs)
        ds.attrs = attrs
        safe_write(ds, output, single_precision=args.single_precision)

    bar, on_step = _progress(end - start, start, label=f"{getattr(provider, 'name', 'run')}")
    wall = time.perf_counter()
    try:
        ds = stepper.run_until_and_store(end, every=config.save_every, on_save=on_save,
                                         on_step=on_step)
    finally:
        bar.close()
    wall = time.perf_counter() - wall
    volume = float(ds["volume"].values[-1])
    print(
        f"{output}: {end - start:g} years ({start:g} -> {end:g}) in {stepper.n_steps} steps "
        f"({wall:.1f} s, {stepper.velocity_evaluations} velocity evaluations, provider "
        f"{getattr(provider, 'name', type(provider).__name__)}); volume "
        f"{float(ds['volume'].values[0]) / 1e9:.4g} -> {volume / 1e9:.4g} km3, budget residual "
        f"{float(ds['budget_residual'].values[-1]):.3g} m3",
        file=sys.stderr,
    )
    checked = VelocityCheck.summary(ds)
    if checked:
        note(f"velocity check, relative L2 of ubar against the reference solver (interior: at least "
             f"3 nodes from ice-free ground and the domain edge): {checked}")
    return 0

