"""ISMIP-HOM experiments A-D (Pattyn et al. 2008, The Cryosphere 2, 95-108).

All four: n = 3, A = 1e-16 Pa^-3 a^-1 (100 MPa^-3 a^-1), rho = 910 kg m^-3, g = 9.81 m s^-2, a
square domain 0 <= x, y <= L periodic in x and y, omega = 2 pi / L.

* A: s = -x tan(0.5 deg), H = 1000 - 500 sin(omega x) sin(omega y), no slip.
* B: the flowline of A: H = 1000 - 500 sin(omega x), no slip.
* C: s = -x tan(0.1 deg), H = 1000, linear sliding with
  beta^2 = 1000 + 1000 sin(omega x) sin(omega y) Pa a m^-1.
* D: the flowline of C: beta^2 = 1000 + 1000 sin(omega x).

The surface is not periodic, its slope is: it is passed to the energy explicitly. Profiles are
taken at the surface along y = L/4 (A, C) or along the flowline (B, D).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from ..constants import ISMIP_HOM_PHYSICS, Physics, VerticalDiscretisation
from ..fields import Geometry, Velocity

EXPERIMENTS = ("A", "B", "C", "D")
LENGTHS_KM = (5, 10, 20, 40, 80, 160)


def ismip_hom_physics(experiment: str) -> Physics:
    """Constants of the experiment: no slip for A/B, linear sliding for C/D."""
    experiment = experiment.upper()
    if experiment in ("A", "B"):
        return ISMIP_HOM_PHYSICS
    # beta^2 is set per node in the geometry; m = 1 (linear law)
    return ISMIP_HOM_PHYSICS.replace(no_slip=False, sliding_exponent=1.0)


def ismip_hom_geometry(experiment: str, *, length_km: float, resolution: int = 40) -> Geometry:
    """Periodic geometry of an ISMIP-HOM experiment on ``resolution`` nodes per side.

    Flowline experiments (B, D) use 4 nodes across the flow (the fields do not vary in y).
    """
    experiment = experiment.upper()
    if experiment not in EXPERIMENTS:
        raise ValueError(f"ISMIP-HOM experiment must be one of {EXPERIMENTS}. Received: {experiment!r}")
    if not length_km > 0:
        raise ValueError(f"length_km must be positive. Received: {length_km!r}")
    if resolution < 4 or resolution % 4:
        raise ValueError(f"resolution must be a multiple of 4. Received: {resolution!r}")
    length = float(length_km) * 1000.0
    dx = length / resolution
    x = np.arange(resolution) * dx
    flowline = experiment in ("B", "D")
    y = np.arange(4) * dx if flowline else x.copy()
    X, Y = np.meshgrid(x, y)
    w = 2.0 * math.pi / length
    if experiment in ("A", "B"):
        alpha = math.radians(0.5)
        pattern = np.sin(w * X) if flowline else np.sin(w * X) * np.sin(w * Y)
        thickness = 1000.0 - 500.0 * pattern
        sliding = None
    else:
        alpha = math.radians(0.1)
        thickness = np.full(X.shape, 1000.0)
        pattern = np.sin(w * X) if flowline else np.sin(w * X) * np.sin(w * Y)
        beta2 = 1000.0 + 1000.0 * pattern  # Pa a m^-1
        sliding = beta2 * 1e-6  # MPa a m^-1
    surface = -X * math.tan(alpha)
    slope = (np.full(X.shape, -math.tan(alpha)), np.zeros(X.shape))
    return Geometry(
        thickness=thickness, bed=surface - thickness, dx=dx, dy=dx, x=x, y=y,
        sliding_coefficient=sliding, periodic=True, surface_slope=slope,
        attrs={"experiment": f"ISMIP-HOM {experiment}", "length_km": float(length_km)},
    )


def surface_profile(experiment: str, geometry: Geometry, velocity: Velocity) -> Tuple[np.ndarray, ...]:
    """Surface velocity along y = L/4 (A, C) or the flowline (B, D).

    Returns ``x_hat`` (x / L, from 0 to 1 inclusive, the periodic end repeated), ``vx``, ``vy``
    and ``speed`` in m/yr.
    """
    experiment = experiment.upper()
    nx = geometry.shape[1]
    row = 0 if experiment in ("B", "D") else geometry.shape[0] // 4
    us = velocity.u_surface[row]
    vs = velocity.v_surface[row]
    us = np.append(us, us[0])
    vs = np.append(vs, vs[0])
    x_hat = np.arange(nx + 1) / nx
    return x_hat, us, vs, np.hypot(us, vs)


def run_experiment(
    experiment: str,
    *,
    length_km: float,
    resolution: int = 40,
    vertical: VerticalDiscretisation = VerticalDiscretisation(levels=10, spacing=2.0),
    config=None,
):
    """Set up and solve one experiment; returns ``(profile, result)``.

    ``profile`` is a dict with ``x_hat``, ``vx``, ``vy``, ``speed`` (surface, m/yr).
    """
    from ..numerics.solver import SolverConfig, solve

    geometry = ismip_hom_geometry(experiment, length_km=length_km, resolution=resolution)
    result = solve(
        geometry, physics=ismip_hom_physics(experiment), vertical=vertical,
        config=config or SolverConfig(),
    )
    x_hat, vx, vy, speed = surface_profile(experiment, geometry, result.velocity)
    return dict(x_hat=x_hat, vx=vx, vy=vy, speed=speed), result


def load_reference(experiment: str, length_km: float, directory) -> dict:
    """Read one of the published ensemble tables (``shared/reference/ismip_hom``).

    Returns a dict of columns (``x_hat``, ``LMLa_mean``, ``LMLa_std``, ...).
    """
    from pathlib import Path

    experiment = experiment.upper()
    name = {"A": "expA_L{:03d}_surface_speed.csv", "B": "expB_L{:03d}_vx_surf.csv"}[experiment]
    path = Path(directory) / name.format(int(length_km))
    with open(path) as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    header = lines[0].strip().split(",")
    data = np.array([[float(v) if v else np.nan for v in ln.strip().split(",")] for ln in lines[1:]])
    return {name: data[:, i] for i, name in enumerate(header)}
