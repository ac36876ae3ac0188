"""Benchmark: reference-solver wall time and iterations to tolerance against grid size.

Solves the side-by-side valley glacier (the IGM case's geometry, scaled to each grid: the same
domain size, so finer grids resolve the same glacier) at 64^2, 128^2 and 256^2 nodes from rest,
``--repeats`` times each (the first solve includes XLA compilation and is reported apart), and
writes the medians to ``scripts/results/solver.json`` and ``solver.md`` with the machine.

    python scripts/bench_solver.py [--sizes 64 128 256] [--repeats 3] [--tolerance 1e-9]
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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    machine = machine_info()

    import numpy as np

    from glacier_emulator.data import example_geometry
    from glacier_emulator.numerics.solver import SolverConfig, solve

    rows = []
    for n in args.sizes:
        dx = args.domain / n
        geometry = example_geometry(nx=n, ny=n, dx=dx)
        cfg = SolverConfig(tolerance=args.tolerance)
        # warm-up: compiles the energy for this grid (every level of the multilevel start)
        first = solve(geometry, config=SolverConfig(tolerance=args.tolerance, max_iterations=2))
        times, its = [], []
        for _ in range(args.repeats if n <= 128 else args.repeats_large):
            r = solve(geometry, config=cfg)
            times.append(r.wall_time)
            its.append(r.iterations)
        coarse, chain = r.report.get("coarse"), []
        while coarse:
            chain.append(f"{coarse['grid'][0]}x{coarse['grid'][1]}:{coarse['iterations']}")
            coarse = coarse.get("coarse")
        row = dict(coarse_levels=" ".join(chain),
            grid=f"{n}x{n}", dx_m=dx, unknowns=r.report["unknowns"], first_solve_s=first.wall_time,
            median_wall_s=statistics.median(times), median_iterations=statistics.median(its),
            converged=bool(r.converged), max_speed_m_per_yr=float(np.max(r.velocity.speed)),
            s_per_iteration=statistics.median(times) / max(1, statistics.median(its)),
        )
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
             "warm-up solve that compiles the energy (its time is the last column).", "",
             "| grid | dx (m) | unknowns | iterations (fine) | coarse levels (grid:iterations) | wall (s) | s/iteration | warm-up (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['grid']} | {r['dx_m']:.1f} | {r['unknowns']} | {r['median_iterations']:.0f} | "
                     f"{r['coarse_levels'] or '-'} | {r['median_wall_s']:.2f} | {r['s_per_iteration']:.4f} | {r['first_solve_s']:.2f} |")
    (out / "solver.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
