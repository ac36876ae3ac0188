"""Bundled example: the synthetic valley glacier of the IGM side-by-side case, and its run config.

The geometry (:func:`example_geometry`) reproduces ``make_synthetic_input.py`` of the IGM
benchmark: a bed rising 10 % along y with a parabolic cross-section,

.. math::

    b(x, y) = 1500 + 0.1\\,y + \\frac{(x - L_x/2)^2}{50\\,\\Delta x\\,n_x}

(m; :math:`L_x` the x coordinate of the last node), and a smooth lens of ice up to 250 m thick in
the middle of the domain (ice-free margins on all sides),

.. math::

    H = 250 \\sqrt{\\max(0, 1 - ((x - L_x/2)/0.35 L_x)^2)\\,\\max(0, 1 - ((y - L_y/2)/0.4 L_y)^2)} .

Values are rounded to float32, as in the benchmark's input file, so the shipped file
``example_glacier.nc`` and the generator agree exactly. The run config ``example_run.yaml`` is
the IGM case: 50 years from 2000, saved every 10, the ``simple`` ELA mass balance (ELA 2300 m,
gradients 0.009 / 0.005 yr^-1, at most 2 m/yr), CFL 0.3, dt <= 1 yr.

Regenerate the file with ``python -m glacier_emulator.data``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from ..fields import Geometry

DATA_DIR = Path(__file__).resolve().parent
EXAMPLE_GLACIER = DATA_DIR / "example_glacier.nc"
EXAMPLE_RUN = DATA_DIR / "example_run.yaml"

__all__ = [
    "example_geometry",
    "example_path",
    "load_example_geometry",
    "example_config",
    "write_example",
    "EXAMPLE_GLACIER",
    "EXAMPLE_RUN",
]


def example_geometry(*, nx: int = 100, ny: int = 100, dx: float = 100.0) -> Geometry:
    """The IGM benchmark's synthetic valley glacier on ``ny x nx`` nodes spaced ``dx`` m.

    Example:
        >>> g = example_geometry()
        >>> g.shape, round(float(g.thickness.max()), 1)
        ((100, 100), 250.0)
    """
    for name, value in (("nx", nx), ("ny", ny)):
        if int(value) != value or value < 2:
            raise ValueError(f"{name} must be an integer >= 2. Received: {name}={value!r}")
    if not (np.isfinite(dx) and dx > 0):
        raise ValueError(f"dx must be > 0 m. Received: dx={dx!r}")
    x, y, bed, thickness = _example_fields(int(nx), int(ny), float(dx))
    f32 = np.float32
    return Geometry(
        thickness=thickness.astype(f32).astype(float),
        bed=bed.astype(f32).astype(float),
        dx=dx,
        x=x.astype(f32).astype(float),
        y=y.astype(f32).astype(float),
        attrs={"title": "synthetic valley glacier (IGM side-by-side case)"},
    )


def _example_fields(nx: int, ny: int, dx: float):
    """Coordinates, bed and thickness in float64 (the benchmark's formulas)."""
    x = np.arange(nx) * dx
    y = np.arange(ny) * dx
    X, Y = np.meshgrid(x, y)
    lx, ly = x[-1], y[-1]
    bed = 1500.0 + 0.10 * Y + (X - lx / 2) ** 2 / (50.0 * dx * nx)
    across = np.clip(1.0 - ((X - lx / 2) / (0.35 * lx)) ** 2, 0.0, None)
    along = np.clip(1.0 - ((Y - 0.5 * ly) / (0.4 * ly)) ** 2, 0.0, None)
    thickness = 250.0 * np.sqrt(across * along)
    return x, y, bed, thickness


def example_path() -> Path:
    """Path of the bundled example input file ``example_glacier.nc``."""
    return EXAMPLE_GLACIER


def load_example_geometry() -> Geometry:
    """The bundled example glacier, read from its file (generated when the file is missing)."""
    if not EXAMPLE_GLACIER.exists():
        return example_geometry()
    from ..io.netcdf import read_geometry

    return read_geometry(EXAMPLE_GLACIER)


def example_config():
    """The example run's :class:`~glacier_emulator.dynamics.stepper.RunConfig` (IGM case)."""
    from ..dynamics.stepper import RunConfig

    return RunConfig.from_yaml(EXAMPLE_RUN)


def write_example(path: Union[str, os.PathLike] = EXAMPLE_GLACIER) -> Path:
    """Write the example geometry as a small compressed float32 NetCDF file (IGM's variables)."""
    import xarray as xr

    g = example_geometry()
    _, _, bed, thickness = _example_fields(100, 100, 100.0)
    f32 = np.float32
    length = {"units": "m"}
    ds = xr.Dataset(
        {
            "topg": (("y", "x"), g.bed.astype(f32), {**length, "standard_name": "bedrock_altitude",
                                                     "long_name": "bed elevation"}),
            "thk": (("y", "x"), g.thickness.astype(f32), {**length, "standard_name": "land_ice_thickness",
                                                          "long_name": "ice thickness"}),
            "usurf": (("y", "x"), (bed + thickness).astype(f32),
                      {**length, "standard_name": "surface_altitude", "long_name": "ice surface elevation"}),
        },
        coords={
            "x": ("x", g.x.astype(f32), {**length, "standard_name": "projection_x_coordinate", "axis": "X"}),
            "y": ("y", g.y.astype(f32), {**length, "standard_name": "projection_y_coordinate", "axis": "Y"}),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": "synthetic valley glacier (IGM side-by-side case, make_synthetic_input.py 100 100 100)",
            "source": "glacier_emulator.data.example_geometry()",
        },
    )
    from ..io.netcdf import safe_write

    return safe_write(ds, path, single_precision=True)
