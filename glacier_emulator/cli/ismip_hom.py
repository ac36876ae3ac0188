"""``glacier-emulator ismip-hom``: run an ISMIP-HOM experiment and write its surface profile."""
from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ismip-hom", help="run ISMIP-HOM experiment A, B, C or D (Pattyn et al. 2008)",
        description="Set up ISMIP-HOM experiment A-D at one domain length, solve it with the "
        "reference solver and write the surface velocity profile (x_hat,vx,vy,speed in m/yr) "
        "along y = L/4 (A, C) or along the flowline (B, D).",
    )
    p.add_argument("experiment", choices=["A", "B", "C", "D"], type=str.upper)
    p.add_argument("--length", type=float, required=True, metavar="KM", help="domain length L in km")
    p.add_argument("--resolution", type=int, default=40, help="nodes per side (multiple of 4; default 40)")
    p.add_argument("--layers", type=int, default=10, help="vertical levels (default 10)")
    p.add_argument("--vertical-spacing", type=float, default=2.0, help="top/bottom layer ratio (default 2)")
    p.add_argument("--tolerance", type=float, default=1e-9, help="solver tolerance (default 1e-9)")
    p.add_argument("-o", "--output", required=True, metavar="PROFILE.csv")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..constants import VerticalDiscretisation
    from ..numerics.solver import SolverConfig
    from ..verification.ismip_hom import run_experiment

    out = Path(args.output)
    if not out.parent.exists():
        raise FileNotFoundError(f"{out}: directory {out.parent} does not exist")
    profile, result = run_experiment(
        args.experiment, length_km=args.length, resolution=args.resolution,
        vertical=VerticalDiscretisation(levels=args.layers, spacing=args.vertical_spacing),
        config=SolverConfig(tolerance=args.tolerance),
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["x_hat", "vx", "vy", "speed"])
            for row in zip(profile["x_hat"], profile["vx"], profile["vy"], profile["speed"]):
                w.writerow([f"{v:.6g}" for v in row])
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"{out}: ISMIP-HOM {args.experiment} L={args.length:g} km, max surface speed "
          f"{profile['speed'].max():.3f} m/yr; {result.summary()}", file=sys.stderr)
    return 0 if result.converged else 1
