"""Benchmark: 50-year forward runs of the IGM side-by-side case with each velocity provider.

The case (../shared/bench/igm/): the bundled example glacier, 100 x 100 nodes at 100 m, 50 years
from 2000 with the ELA mass balance (ELA 2300 m, gradients 0.009 / 0.005 yr^-1, max 2 m/yr),
CFL 0.3, dt <= 1 yr, saved every 10 years; A = 78 MPa^-3 yr^-1, n = 3, Weertman m = 1/3 with
c = 0.0464 MPa m^-1/3 yr^1/3 (IGM's defaults, which are the package's).

Each provider runs in this one process after a warm-up (compilation) of its velocity call, and the
wall time of the run is measured (median over ``--repeats``). The solver-driven run is the
reference: for the others the script reports the relative L2 error of |ubar| on ice at 2010,
2030 and 2050, the thickness RMS difference, and the volume at 2050. With ``IGM_VENV`` set it
also runs IGM's ``unified`` and ``solved`` variants via ../shared/bench/igm/run_igm.sh and reads
their output for the same numbers.

    python scripts/bench_forward.py [--providers emulator solver sia] [--model PATH] [--repeats 1]

A provider ``emulator+refineN`` is the emulator refined by at most N solver iterations at every
velocity evaluation (``Emulator.with_refine``, ``run --refine N``), each refinement with the
previous step's L-BFGS memory (``EmulatorProvider``'s default); ``emulator+refineN+carry`` also
starts each refinement from the network's prediction plus the previous step's correction (``run
--refine N --carry-correction``), ``emulator+refineN+neither`` has neither: side by side, what
each carries over is measured in one run. ``emulator@xy`` (``@x``, ``@dihedral``; also
``emulator@xy+refineN``) is the same weights with another symmetry averaging
(``Emulator.with_symmetrise``, ``run --symmetrise``), so that its ratio to IGM is measured in the
same run. ``--named NAME=PATH`` makes a provider ``NAME`` (also ``NAME@MODE``, ``NAME+refineN``)
of another model file, so that two models (a candidate and the shipped default, say) are timed
in one run. ``--igm-variants unified`` leaves out IGM's slow ``solved`` variant.

Results: scripts/results/forward.json and forward.md (machine and date included).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from glacier_emulator.constants import SYMMETRISE_MODES
from glacier_emulator.dynamics.providers import PROVIDERS
from glacier_emulator.fields import relative_l2
from glacier_emulator.provenance import describe_machine, load_average, machine_info

CHECK_YEARS = (2010.0, 2030.0, 2050.0)


class CountingSolver:
    """The solver provider, recording each step's iterations and convergence."""

    def __init__(self, inner):
        self.inner, self.name, self.log = inner, inner.name, []

    def velocity(self, geometry):
        out = self.inner.velocity(geometry)
        r = self.inner.last_result
        self.log.append((int(r.iterations), bool(r.converged)))
        return out

    def max_time_step(self, geometry, velocity):
        return self.inner.max_time_step(geometry, velocity)


def parse_named(items) -> dict:
    """``["NAME=PATH", ...]`` -> ``{NAME: PATH}`` (``--named``); names must not be built-in."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or any(c in name for c in "@+=") or name in PROVIDERS:
            raise SystemExit(f"--named {item!r}: give NAME=PATH, NAME without '@', '+', '=' and "
                             f"not one of {', '.join(PROVIDERS)}")
        named[name] = path
    return named


def run_provider(name, *, model=None, years=50.0, solver_iterations=100, named=None):
    from glacier_emulator.constants import Physics
    from glacier_emulator.data import example_config, load_example_geometry
    from glacier_emulator.dynamics.providers import make_provider
    from glacier_emulator.dynamics.stepper import Stepper

    config = example_config()
    geometry = load_example_geometry()
    emulator = None
    name, _, refine = name.partition("+refine")
    refine, _, carry = refine.partition("+")
    if carry not in ("", "carry", "neither"):
        raise SystemExit(f"unknown provider option +{carry} (valid: +carry, +neither)")
    name, _, symmetrise = name.partition("@")
    if name in (named or {}):  # another model file: the emulator provider with it
        name, model = "emulator", named[name]
    if symmetrise and (name != "emulator" or symmetrise not in SYMMETRISE_MODES):
        raise SystemExit(f"unknown provider {name}@{symmetrise} (valid: emulator@MODE, "
                         f"MODE one of {', '.join(SYMMETRISE_MODES)})")
    if name == "emulator" and (model or refine or symmetrise):
        from glacier_emulator.emulator import Emulator

        emulator = Emulator.load(model) if model else Emulator.pretrained()
        if symmetrise:
            emulator = emulator.with_symmetrise(symmetrise)
        if refine:
            emulator = emulator.with_refine(int(refine))
    solver_config = None
    if name == "solver":
        from glacier_emulator.numerics.solver import SolverConfig

        solver_config = SolverConfig(max_iterations=solver_iterations)
    provider = make_provider(name, Physics(), emulator=emulator, solver_config=solver_config)
    if carry:
        provider.carry_correction = carry == "carry"
        provider.reuse_memory = carry != "neither"
    if name == "solver":
        # the warm-up is a full solve from rest: the run starts from the converged velocity
        provider.config = SolverConfig()
        provider.velocity(geometry)
        provider.config = solver_config
        provider = CountingSolver(provider)
    else:
        provider.velocity(geometry)  # warm-up: compilation is not part of the run
        if callable(getattr(provider, "reset", None)):
            provider.reset()  # ... and the run's first step starts as `run`'s does
    stepper = Stepper.from_config(geometry, provider, config)
    t0 = time.perf_counter()
    ds = stepper.run_until_and_store(config.start_time + years, every=config.save_every)
    wall = time.perf_counter() - t0
    extra = {"model": str(model) if model else "shipped default"} if name == "emulator" else {}
    if isinstance(provider, CountingSolver):
        its = [k for k, _ in provider.log]
        extra = dict(velocity_solves=len(its), iterations_median=float(np.median(its)),
                     steps_converged=int(sum(c for _, c in provider.log)))
        # how far the per-step-capped solve is from a converged one at the end of the run
        from glacier_emulator.numerics.solver import solve

        final = stepper.geometry
        ref = solve(final, physics=Physics()).velocity
        a = np.hypot(ds["ubar"].values[-1], ds["vbar"].values[-1])
        b = np.hypot(ref.ubar, ref.vbar)
        ice = final.thickness > 0
        extra["relL2_speed_end_vs_converged_solve"] = relative_l2(a, b, ice)
    return ds, wall, extra


def speed(ds, i):
    """|ubar| at output index i: from ubar, vbar, or IGM's velbar_mag (its output has no ubar)."""
    if "ubar" in ds:
        return np.hypot(ds["ubar"].values[i], ds["vbar"].values[i])
    return ds["velbar_mag"].values[i]


def compare(ds, ref):
    out = {}
    years = np.asarray(ds["year"].values, float)
    ref_years = np.asarray(ref["year"].values, float)
    for y in CHECK_YEARS:
        i = int(np.argmin(np.abs(years - y)))
        j = int(np.argmin(np.abs(ref_years - y)))
        a = speed(ds, i)
        b = speed(ref, j)
        ice = ref["thk"].values[j] > 0
        out[f"relL2_speed_{int(y)}"] = relative_l2(a, b, ice)
    h = ds["thk"].values[-1]
    hr = ref["thk"].values[-1]
    out["thickness_rms_diff_m_2050"] = float(np.sqrt(np.mean((h - hr) ** 2)))
    return out


def run_igm(venv, variant, workdir):
    script = Path(__file__).resolve().parents[2] / "shared" / "bench" / "igm" / "run_igm.sh"
    t0 = time.perf_counter()
    subprocess.run(["bash", str(script), venv, str(workdir), variant], check=True)
    wall = time.perf_counter() - t0
    import xarray as xr

    ds = xr.open_dataset(Path(workdir) / f"out_{variant}" / "output.nc", decode_times=False).load()
    ds = ds.assign_coords(year=("time", np.asarray(ds["time"].values, float)))
    return ds, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", nargs="+", default=["emulator", "solver", "sia"])
    parser.add_argument("--model", help="emulator model file (default: the shipped default)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--solver-repeats", type=int, default=1,
                        help="repeats of the (slow) solver-driven run; --repeats applies to the others")
    parser.add_argument("--solver-iterations", type=int, default=100,
                        help="L-BFGS iterations per time step of the solver-driven run (warm-started "
                             "from the previous step; IGM's solved uses 100 Adam iterations); "
                             "the run starts from a converged solve")
    parser.add_argument("--save-runs", action="store_true",
                        help="write each provider's time series to OUT/forward_NAME.nc")
    parser.add_argument("--load-run", nargs="+", default=[], metavar="NAME=PATH",
                        help="use a time series saved by an earlier --save-runs instead of running "
                             "NAME (its wall time is read from the file; the table says so)")
    parser.add_argument("--named", nargs="+", default=[], metavar="NAME=PATH",
                        help="a provider NAME (NAME@MODE, NAME+refineN) that is the emulator of "
                             "model file PATH, beside the others in the same run")
    parser.add_argument("--years", type=float, default=50.0)
    parser.add_argument("--igm-variants", nargs="+", default=["unified", "solved"],
                        choices=["unified", "solved"], help="IGM's variants to run when IGM_VENV is set")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    named = parse_named(args.named)
    machine = machine_info()

    import xarray as xr

    results, datasets = {}, {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for item in args.load_run:
        name, _, path = item.partition("=")
        ds = xr.open_dataset(path).load()
        datasets[name] = ds
        results[name] = json.loads(ds.attrs["benchmark"])
        results[name]["from_earlier_run"] = str(path)
        print(name, "(loaded)", json.dumps(results[name]), flush=True)
    for name in args.providers:
        walls = []
        for _ in range(args.solver_repeats if name == "solver" else args.repeats):
            ds, wall, extra = run_provider(name, model=args.model, years=args.years,
                                           solver_iterations=args.solver_iterations, named=named)
            walls.append(wall)
        datasets[name] = ds
        results[name] = dict(
            wall_s=statistics.median(walls), steps=int(ds["n_steps"].values[-1]) if "n_steps" in ds else None,
            volume_2050_km3=float(ds["volume"].values[-1]) / 1e9, **extra,
        )
        print(name, json.dumps(results[name]), flush=True)
        if args.save_runs:
            saved = ds.copy()
            saved.attrs["benchmark"] = json.dumps(results[name])
            saved.to_netcdf(out / f"forward_{name}.nc")
    venv = os.environ.get("IGM_VENV")
    if venv:
        work = Path(args.out) / "igm_work"
        for variant in args.igm_variants:
            ds, wall = run_igm(venv, variant, work)
            datasets[f"igm_{variant}"] = ds
            results[f"igm_{variant}"] = dict(wall_s=wall, volume_2050_km3=float(
                (ds["thk"].values[-1].sum() * 100.0 * 100.0) / 1e9))
    if "solver" in datasets:
        for name, ds in datasets.items():
            if name != "solver":
                results[name].update(compare(ds, datasets["solver"]))
    if "igm_unified" in datasets and "igm_solved" in datasets:
        results["igm_unified"]["vs_igm_solved"] = compare(datasets["igm_unified"], datasets["igm_solved"])
    ratios = [(ours, theirs) for ours in results if not ours.startswith("igm_")
              for theirs in ("igm_unified", "igm_solved") if theirs in results]
    for ours, theirs in ratios:
        results[ours][f"speedup_vs_{theirs}"] = results[theirs]["wall_s"] / results[ours]["wall_s"]
    machine["load_average_end"] = load_average()
    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine,
                command="python scripts/bench_forward.py " + " ".join(sys.argv[1:]),
                repeats=args.repeats, results=results)
    (out / "forward.json").write_text(json.dumps(meta, indent=2))
    lines = ["# Forward runs: IGM side-by-side case (100 x 100 at 100 m, 50 years, ELA SMB)", "",
             f"{meta['date']}, {describe_machine(machine)}; wall time of the "
             f"run after a warm-up velocity call, median of {args.repeats} (solver-driven run: "
             f"{args.solver_repeats}).", "",
             "| provider | wall (s) | steps | relL2 |ubar| 2010 / 2030 / 2050 vs solver | thickness RMS diff 2050 (m) | volume 2050 (km3) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        rel = " / ".join(f"{r[f'relL2_speed_{int(y)}']:.3f}" for y in CHECK_YEARS) if f"relL2_speed_{int(CHECK_YEARS[0])}" in r else "reference" if name == "solver" else "-"
        rms = f"{r['thickness_rms_diff_m_2050']:.2f}" if "thickness_rms_diff_m_2050" in r else "-"
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r.get('steps') or '-'} | {rel} | {rms} | {r['volume_2050_km3']:.3f} |")
    for name, r in results.items():
        if "iterations_median" in r:
            lines += ["", f"{name}: L-BFGS warm-started each step, at most {args.solver_iterations} "
                      f"iterations ({r['steps_converged']} of {r['velocity_solves']} velocity solves "
                      f"met the 1e-9 tolerance within them; median {r['iterations_median']:.0f}); "
                      "|ubar| at the end vs a converged solve of the final geometry: relL2 "
                      f"{r['relL2_speed_end_vs_converged_solve']:.4f}."]
        if "from_earlier_run" in r:
            lines += ["", f"{name}: loaded from {r['from_earlier_run']} (an earlier run of this "
                      "script on this machine; its wall time is that run's)."]
    if any(n.startswith("igm_") for n in results):
        ran = [f"`{v}`" + (" (default)" if v == "unified" else "") for v in args.igm_variants]
        lines += ["", f"IGM's rows: its {' and '.join(ran)} variant{'s' if len(ran) > 1 else ''} run by "
                  "../shared/bench/igm/run_igm.sh in this run; the wall time is the whole `igm_run` "
                  "process (start-up and imports included, about 4 s).", ""]
        own = results.get("igm_unified", {}).get("vs_igm_solved")
        if own:
            lines.append("igm_unified against igm_solved (IGM's own reference): relL2 |ubar| "
                         + " / ".join(f"{own[f'relL2_speed_{int(y)}']:.3f}" for y in CHECK_YEARS)
                         + f", thickness RMS diff 2050 {own['thickness_rms_diff_m_2050']:.2f} m.")
        lines += [f"- wall time {theirs} / {ours}: {results[ours][f'speedup_vs_{theirs}']:.2f}"
                  for ours, theirs in ratios]
    (out / "forward.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
