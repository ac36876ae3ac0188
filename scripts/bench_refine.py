#!/usr/bin/env python
"""Benchmark: the network alone, the network refined by N solver iterations, and a converged solve.

``Emulator.predict_geometry(geometry, refine=N)`` (``--refine N`` of ``predict`` and ``run``) runs
at most N L-BFGS iterations of the reference solver from the network's prediction. This measures
what each N buys and costs, side by side in one run, on the bundled example glacier (year 0, 100 x
100 nodes at 100 m) and optionally on labelled glaciers (``--test``): the relative L2 error of
(ubar, vbar) on ice against a converged reference solve (the solver's defaults, tolerance 1e-9),
and the wall time of each call (median of ``--repeats`` calls after a warm-up call that compiles),
with the converged solve's own time (from rest, as ``glacier-emulator solve`` does) for the ratio.

    python scripts/bench_refine.py [--models velocity3d-prior ubar-prior] [--iterations 0 10 30 100]
        [--test DIR] [--repeats 3] [--output DIR]

Writes DIR/refine.json and refine.md (default scripts/results/).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from glacier_emulator.provenance import describe_machine, load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeats):
    """(result of the last call, median wall time of ``repeats`` calls after one warm-up call)."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def bench_glacier(name, geometry, emulators, iterations, repeats, reference=None):
    """One glacier: the converged solve (timed from rest) and every model at every N."""
    from glacier_emulator.fields import relative_l2
    from glacier_emulator.numerics.solver import solve

    first = emulators[0]
    t0 = time.perf_counter()
    result = solve(geometry, physics=first.physics, vertical=first.vertical)
    solve_s = time.perf_counter() - t0  # includes the compilation, as a one-off solve does
    ref = result.velocity if reference is None else reference
    ice = geometry.thickness > 0
    target = np.stack([ref.ubar, ref.vbar])
    row = dict(glacier=name, grid=list(geometry.shape), dx=geometry.dx, solve_s=solve_s,
               solve_iterations=result.iterations, results=[])
    for emulator in emulators:
        for n in iterations:
            v, seconds = timed(lambda: emulator.predict_geometry(geometry, refine=n), repeats)
            row["results"].append(dict(model=emulator.name, refine=n, seconds=seconds,
                                       rel_l2_ubar=relative_l2(np.stack([v.ubar, v.vbar]), target, ice)))
            print(f"{name} {emulator.name} refine={n}: {row['results'][-1]['rel_l2_ubar']:.4f} "
                  f"in {seconds:.3f} s (converged solve {solve_s:.1f} s)", file=sys.stderr, flush=True)
    return row


def markdown(report: dict) -> str:
    lines = ["# The network, refined by N solver iterations, against a converged solve", "",
             f"Date: {report['date']}. Machine: {describe_machine(report['machine'])}. "
             f"Command: `{report['command']}`.", "",
             "Relative L2 error of (ubar, vbar) on ice against a converged reference solve; time of "
             "one call (median of the repeats after a warm-up call that compiles); the converged "
             "solve from rest, compilation included, as a one-off `glacier-emulator solve`.", ""]
    models = sorted({r["model"] for row in report["rows"] for r in row["results"]})
    for row in report["rows"]:
        lines += [f"## {row['glacier']} ({row['grid'][0]} x {row['grid'][1]}, {row['dx']:.0f} m): "
                  f"converged solve {row['solve_s']:.1f} s ({row['solve_iterations']} iterations)", "",
                  "| refine N | " + " | ".join(f"{m}: rel. L2 ubar | time (s) | x faster than the solve"
                                              for m in models) + " |",
                  "|---:|" + "---:|---:|---:|" * len(models)]
        for n in sorted({r["refine"] for r in row["results"]}):
            cells = []
            for m in models:
                r = next(x for x in row["results"] if x["model"] == m and x["refine"] == n)
                cells.append(f"{r['rel_l2_ubar']:.4f} | {r['seconds']:.3f} | {row['solve_s'] / r['seconds']:.0f}")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    if len(report["rows"]) > 1:
        lines += ["## Medians over the glaciers", "", "| model | refine N | rel. L2 ubar median | "
                  "p90 | time median (s) | solve time median (s) |", "|---|---:|---:|---:|---:|---:|"]
        solve_med = statistics.median(row["solve_s"] for row in report["rows"])
        for m in models:
            for n in sorted({r["refine"] for r in report["rows"][0]["results"]}):
                rs = [x for row in report["rows"] for x in row["results"] if x["model"] == m and x["refine"] == n]
                errs = [x["rel_l2_ubar"] for x in rs]
                lines.append(f"| {m} | {n} | {np.median(errs):.4f} | {np.percentile(errs, 90):.4f} | "
                             f"{statistics.median(x['seconds'] for x in rs):.3f} | {solve_med:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["velocity3d-prior", "ubar-prior"],
                        help="shipped model names or .keras files")
    parser.add_argument("--iterations", nargs="+", type=int, default=[0, 10, 30, 100])
    parser.add_argument("--test", nargs="*", default=[], help="labelled NetCDF files or folders (their "
                        "geometry is solved again here, so the time is measured)")
    parser.add_argument("--no-example", action="store_true", help="leave out the bundled example glacier")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from glacier_emulator.data import example_geometry
    from glacier_emulator.emulator import Emulator
    from glacier_emulator.io import read_geometry

    machine = machine_info()
    emulators = [Emulator.load(m) if m.endswith(".keras") else Emulator.pretrained(m) for m in args.models]
    glaciers = [] if args.no_example else [("example glacier, year 0", example_geometry())]
    for item in args.test:
        p = Path(item)
        for f in (sorted(p.glob("*.nc")) if p.is_dir() else [p]):
            glaciers.append((f"{p.name}/{f.name}" if p.is_dir() else f.name, read_geometry(f)))
    rows = [bench_glacier(name, g, emulators, args.iterations, args.repeats) for name, g in glaciers]
    report = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  machine=dict(machine, load_average_end=load_average()),
                  command="python scripts/bench_refine.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  models=[e.name for e in emulators], rows=rows)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "refine.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "refine.md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
