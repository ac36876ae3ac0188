#!/usr/bin/env python
"""How local is the velocity of a labelled dataset? (A diagnostic for the training data.)

For every glacier: the basal share of the flow (|u_b| / |ubar|, RMS over ice) and how far a
*local* estimate of the speed is from the solver's: shallow-ice deformation plus Weertman sliding
driven by the local driving stress tau = rho g H |grad s| (slopes smoothed over ``--smooth``
cells), u_est = 2A/(n+2) tau^n H + (tau / c)^(1/m). Reported: the relative L2 error of u_est and
the standard deviation of log(u_est / u) over ice. A U-Net sees its inputs through a finite
receptive field, so data on which the local estimate is far off need the non-local part learned.

    python training/local_estimates.py data/train [--smooth 2]
"""
from __future__ import annotations

import argparse
import glob
import os
from collections import defaultdict

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="a folder of labelled NetCDF samples")
    parser.add_argument("--smooth", type=float, default=2.0, help="Gaussian smoothing of the slopes (cells)")
    args = parser.parse_args(argv)

    import xarray as xr
    from scipy.ndimage import gaussian_filter

    from glacier_emulator.constants import DEFAULT_PHYSICS as P
    from glacier_emulator.io import read_geometry

    rows = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(args.data, "*.nc"))):
        with xr.open_dataset(path) as ds:
            speed = np.hypot(ds["ubar"].values, ds["vbar"].values)
            basal = np.hypot(ds["uvel"].values[0], ds["vvel"].values[0])
            kind = str(ds.attrs.get("kind", "?"))
        g = read_geometry(path)
        ice = g.thickness > 0
        sx, sy = g.slopes()
        if args.smooth > 0:
            sx, sy = gaussian_filter(sx, args.smooth), gaussian_filter(sy, args.smooth)
        tau = P.rho_g * g.thickness * np.hypot(sx, sy)
        a = P.rate_factor if g.rate_factor is None else g.rate_factor
        c = P.sliding_coefficient if g.sliding_coefficient is None else g.sliding_coefficient
        n, m = P.glen_exponent, P.sliding_exponent
        est = 2 * a / (n + 2) * tau**n * g.thickness + (tau / c) ** (1 / m)
        u = speed[ice]
        rows[kind].append((np.linalg.norm(basal[ice]) / np.linalg.norm(u),
                           np.linalg.norm(est[ice] - u) / np.linalg.norm(u),
                           np.std(np.log(np.maximum(est[ice], 1e-3) / np.maximum(u, 1e-3)))))
    print(f"{'kind':10s} {'n':>4s} {'basal share':>12s} {'rel L2 local':>13s} {'log std':>8s}  (medians)")
    everything = []
    for kind, values in sorted(rows.items()):
        everything += values
        med = np.median(np.array(values), axis=0)
        print(f"{kind:10s} {len(values):4d} {med[0]:12.2f} {med[1]:13.2f} {med[2]:8.2f}")
    med = np.median(np.array(everything), axis=0)
    print(f"{'all':10s} {len(everything):4d} {med[0]:12.2f} {med[1]:13.2f} {med[2]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
