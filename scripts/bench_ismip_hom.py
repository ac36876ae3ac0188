"""Benchmark: ISMIP-HOM A-D with the reference solver, next to the published first-order ensemble.

Runs every experiment at the six lengths (40 x 40 nodes, 10 levels, tolerance 1e-9) and reports
the maximum of the surface-speed profile (along y = L/4 for A and C, the flowline for B and D),
with the LMLa (multilayer first-order) ensemble mean and standard deviation of Pattyn et al.
(2008): for A and B from tests/data/ismip_hom; for C and D from ``--reference-cd`` (a CSV with
columns experiment,length_km,n,mean,std computed from the paper's supplement), when given.
For A and B it also reports the profile's RMS difference from the ensemble mean curve.

    python scripts/bench_ismip_hom.py [--experiments A B C D] [--reference-cd FILE]

Results: scripts/results/ismip_hom.json and ismip_hom.md.
"""
from __future__ import annotations

import argparse
import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from glacier_emulator.provenance import describe_machine, load_average, machine_info

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "ismip_hom"


def lmla_ab(experiment, length_km):
    for line in (DATA / "summary_max_surface_speed_AB.csv").read_text().splitlines():
        parts = line.split(",")
        if parts[:3] == [experiment, str(length_km), "LMLa"]:
            return int(parts[3]), float(parts[4]), float(parts[5])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", nargs="+", default=["A", "B", "C", "D"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[5, 10, 20, 40, 80, 160])
    parser.add_argument("--resolution", type=int, default=40)
    parser.add_argument("--reference-cd", help="CSV experiment,length_km,n,mean,std for C and D")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    machine = machine_info()

    from glacier_emulator.verification.ismip_hom import load_reference, run_experiment

    ref_cd = {}
    if args.reference_cd:
        with open(args.reference_cd) as f:
            for row in csv.DictReader(f):
                ref_cd[(row["experiment"], int(row["length_km"]))] = (
                    int(row["n"]), float(row["mean"]), float(row["std"]))
    rows = []
    for e in args.experiments:
        for L in args.lengths:
            profile, result = run_experiment(e, length_km=L, resolution=args.resolution)
            key = "vx" if e in ("B", "D") else "speed"
            row = dict(experiment=e, length_km=L, max_surface_speed=float(np.max(profile[key])),
                       converged=result.converged, iterations=result.iterations,
                       wall_s=result.wall_time)
            ref = lmla_ab(e, L) if e in ("A", "B") else ref_cd.get((e, L))
            if ref:
                row.update(lmla_n=ref[0], lmla_mean=ref[1], lmla_std=ref[2],
                           within_2std=abs(row["max_surface_speed"] - ref[1]) <= 2 * ref[2])
            if e in ("A", "B"):
                table = load_reference(e, L, DATA)
                ours = np.interp(table["x_hat"], profile["x_hat"], profile[key])
                curve = table["LMLa_mean"]
                row["rms_vs_mean_curve_rel"] = float(np.sqrt(np.nanmean((ours - curve) ** 2)) / np.nanmax(curve))
            rows.append(row)
            print(json.dumps(row), flush=True)
    machine["load_average_end"] = load_average()
    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine,
                resolution=args.resolution, rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ismip_hom.json").write_text(json.dumps(meta, indent=2))
    lines = ["# ISMIP-HOM with the reference solver", "",
             f"{meta['date']}, {describe_machine(machine)}; "
             f"{args.resolution} x {args.resolution} nodes, 10 levels, tolerance 1e-9.", "",
             "| exp | L (km) | max surface speed (m/yr) | LMLa mean +- std (n) | within 2 std | RMS vs mean curve | iterations | wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ens = f"{r['lmla_mean']:.2f} +- {r['lmla_std']:.2f} ({r['lmla_n']})" if "lmla_mean" in r else "-"
        within = ("yes" if r["within_2std"] else "no") if "within_2std" in r else "-"
        rms = f"{100 * r['rms_vs_mean_curve_rel']:.1f} %" if "rms_vs_mean_curve_rel" in r else "-"
        lines.append(f"| {r['experiment']} | {r['length_km']} | {r['max_surface_speed']:.2f} | {ens} | "
                     f"{within} | {rms} | {r['iterations']} | {r['wall_s']:.1f} |")
    (out / "ismip_hom.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
