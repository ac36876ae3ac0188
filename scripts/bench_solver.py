"""Benchmark: reference-solver wall time and iterations to tolerance against grid size.

Solves the side-by-side valley glacier (the IGM case's geometry, scaled to each grid: the same
domain size, so finer grids resolve the same glacier) at 64^2, 128^2 and 256^2 nodes from rest,
``--repeats`` times each (the first solve includes XLA compilation and is reported apart), and
writes the medians to ``scripts/results/solver.json`` and ``solver.md`` with the machine. Each
grid is solved with every ``--diagonal-probes`` setting (``SolverConfig.diagonal_probes``; by
default the solver's own and 0, the solver without its diagonal preconditioner), side by side in
the same run, with the wall-time ratio and the relative L2 difference of the two (ubar, vbar).

    python scripts/bench_solver.py [--sizes 64 128 256] [--repeats 3] [--tolerance 1e-9]
        [--diagonal-probes 2 0]
"""
from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

from glacier_emulator.provenance import describe_machine, load_average, machine_info


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-large", type=int, default=1,
                        help="repeats for grids above 128^2 (default 1)")
    parser.add_argument("--tolerance", type=float, default=1e-9)
    parser.add_argument("--domain", type=float, default=10000.0, help="domain side (m), default 10 km")
    parser.add_argument("--diagonal-probes", type=int, nargs="+", default=None,
                        help="SolverConfig.diagonal_probes settings to compare (default: the "
                        "solver's own, then 0)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    machine = machine_info()

    import numpy as np

    from glacier_emulator.data import example_geometry
    from glacier_emulator.fields import relative_l2
    from glacier_emulator.numerics.solver import SolverConfig, solve

    if args.diagonal_probes is None:
        args.diagonal_probes = [SolverConfig().diagonal_probes, 0]
    rows = []
    for n in args.sizes:
        dx = args.domain / n
        geometry = example_geometry(nx=n, ny=n, dx=dx)
        # warm-up: compiles the energy for this grid (every level of the multilevel start)
        first = solve(geometry, config=SolverConfig(tolerance=args.tolerance, max_iterations=2))
        baseline = None
        for probes in args.diagonal_probes:
            cfg = SolverConfig(tolerance=args.tolerance, diagonal_probes=probes)
            times, its = [], []
            for _ in range(args.repeats if n <= 128 else args.repeats_large):
                r = solve(geometry, config=cfg)
                times.append(r.wall_time)
                its.append(r.iterations)
            coarse, chain = r.report.get("coarse"), []
            while coarse:
                chain.append(f"{coarse['grid'][0]}x{coarse['grid'][1]}:{coarse['iterations']}")
                coarse = coarse.get("coarse")
            ice = geometry.thickness > 0
            velocity = np.stack([r.velocity.ubar, r.velocity.vbar])
            row = dict(coarse_levels=" ".join(chain), diagonal_probes=probes,
                grid=f"{n}x{n}", dx_m=dx, unknowns=r.report["unknowns"], first_solve_s=first.wall_time,
                median_wall_s=statistics.median(times), median_iterations=statistics.median(its),
                converged=bool(r.converged), max_speed_m_per_yr=float(np.max(r.velocity.speed)),
                s_per_iteration=statistics.median(times) / max(1, statistics.median(its)),
                wall_vs_first=None if baseline is None else statistics.median(times) / baseline[0],
                difference_from_first=None if baseline is None else float(relative_l2(velocity, baseline[1], ice)),
            )
            if baseline is None:
                baseline = (statistics.median(times), velocity)
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine["load_average_end"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine,
                command="python scripts/bench_solver.py " + " ".join(
                    f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in vars(args).items() if k != "out"),
                repeats=args.repeats, tolerance=args.tolerance, rows=rows)
    (out / "solver.json").write_text(json.dumps(meta, indent=2))
    lines = [f"# Reference solver: time to tolerance {args.tolerance:g}", "",
             f"{meta['date']}, {describe_machine(machine)}; median of "
             f"{args.repeats} solves from rest ({args.repeats_large} above 128^2) after a two-iteration "
             "warm-up solve that compiles the energy (its time is the last column). `probes`: "
             "`SolverConfig.diagonal_probes` (0: no diagonal preconditioner); the last two columns "
             f"compare each setting with the first ({args.diagonal_probes[0]}) on the same grid: wall-time "
             "ratio, and relative L2 difference of (ubar, vbar) on ice.", "",
             "| grid | dx (m) | unknowns | probes | iterations (fine) | coarse levels (grid:iterations) | wall (s) | s/iteration | warm-up (s) | wall / first | difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["wall_vs_first"] is None else f"{r['wall_vs_first']:.2f}"
        diff = "-" if r["difference_from_first"] is None else f"{r['difference_from_first']:.1e}"
        lines.append(f"| {r['grid']} | {r['dx_m']:.1f} | {r['unknowns']} | {r['diagonal_probes']} | "
                     f"{r['median_iterations']:.0f} | {r['coarse_levels'] or '-'} | {r['median_wall_s']:.2f} | "
                     f"{r['s_per_iteration']:.4f} | {r['first_solve_s']:.2f} | {ratio} | {diff} |")
    (out / "solver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
