"""The unit system and the physical defaults, chosen once for the whole package.

Units (the convention of IGM and icepack):

================  ==========================  ==========================
quantity          unit                        NetCDF ``units`` attribute
================  ==========================  ==========================
length            metre                       ``m``
time              year (365 days, noleap)     ``year``
velocity          metre per year              ``m year-1``
stress            megapascal                  ``MPa``
rate factor A     MPa^-n yr^-1                ``MPa-3 year-1`` (n = 3)
sliding coeff. c  MPa (m/yr)^-m               ``MPa m-1/3 year1/3`` (m = 1/3)
SMB               metre of ice per year       ``m year-1``
================  ==========================  ==========================

Every other module takes its units and defaults from here. :class:`Physics` is the one place the
physical constants of the Blatter-Pattyn model live; the solver, the emulator, physics-informed
training, the time stepper and the command line all take one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

import numpy as np

SECONDS_PER_YEAR = 365.0 * 86400.0
"""Seconds in one model year (noleap calendar)."""

PA_PER_MPA = 1.0e6

# Canonical unit strings as written into NetCDF files.
UNITS = {
    "length": "m",
    "time": "year",
    "velocity": "m year-1",
    "stress": "MPa",
    "rate_factor": "MPa-3 year-1",
    "sliding_coefficient": "MPa m-1/3 year1/3",
    "smb": "m year-1",
    "slope": "1",
    "density": "kg m-3",
    "volume": "m3",
    "area": "m2",
    "volume_rate": "m3 year-1",
}

SYMMETRY_IMAGES = {"none": 1, "x": 2, "xy": 4, "dihedral": 8}
"""The ``symmetrise`` modes of the emulator's U-Net and how many transformed images of the glacier
each evaluates the network on: none; the x mirror; both mirrors; both mirrors and the transpose
(all eight rotations and mirrors of the grid). Here, not in :mod:`glacier_emulator.models`, so
that the command line can offer them without importing TensorFlow."""

SYMMETRISE_MODES = tuple(SYMMETRY_IMAGES)


WIDE_ICE_CELLS = 128
"""Ice wider than this many grid cells gets an :class:`~glacier_emulator.emulator.ExtentWarning`
(twice the 64 x 64 grids the shipped emulators were trained on; ``velocity3d-prior`` 1.7 and 1.8
also saw 96 x 96 glaciers, in 64-node crops). Their error grows with the extent of the ice in
cells, not in metres: the bundled example glacier, 7 km of ice at year 0, is predicted well on a
200 m grid and worse the finer the grid (:data:`EXAMPLE_EXTENT_ERRORS`); along its 50-year run at
100 m, where the ice fills the 99-cell domain, within 2-5 % (1.8), and on the held-out 96 x 96
glaciers (ice up to 96 cells across) as on 64 x 64 ones."""


@dataclass(frozen=True)
class ExtentErrors:
    """The default model's error on the bundled example glacier (year 0) at several grid
    spacings, as measured by ``scripts/bench_extent.py`` (``scripts/results/extent.json``, which
    ``tests/test_emulator.py`` holds these numbers to): relative L2 error of ubar on the ice
    against a converged solve, on the grid as given and with ``coarsen="auto"`` at 50 m."""

    model: str
    rel_l2_ubar: Tuple[Tuple[float, float], ...]  # (dx in m, error), coarse to fine
    coarsen_auto_at_50m: float

    def percentages(self) -> str:
        """E.g. ``"2 % off on a 200 m grid, 6 % at 100 m, 25 % at 50 m"``."""
        (dx, err), *finer = self.rel_l2_ubar
        first = f"{100 * err:.0f} % off on a {dx:.0f} m grid"
        return ", ".join([first] + [f"{100 * err:.0f} % at {dx:.0f} m" for dx, err in finer])


EXAMPLE_EXTENT_ERRORS = ExtentErrors(
    model="ubar-prior 2.2.0",
    rel_l2_ubar=((200.0, 0.028), (100.0, 0.035), (50.0, 0.209)),
    coarsen_auto_at_50m=0.030,
)
"""How the default model's error grows with the ice's extent in cells (:data:`WIDE_ICE_CELLS`):
the bundled example glacier spans 39, 79 and 160 cells at 200, 100 and 50 m. Quoted by the
:class:`~glacier_emulator.emulator.ExtentWarning`, the CLI's ``--coarsen`` help and the model
cards (``scripts/evaluate_model.py``): update it when the benchmark is rerun."""

COARSEN_TARGET_CELLS = 48
"""``coarsen="auto"`` acts on ice wider than :data:`WIDE_ICE_CELLS` and halves the grid until the
ice spans at most this many cells (the training crop up to 1.6) or the next halving would leave
the model's grid-spacing range. Narrower ice is left alone: on the generator's 96 x 96 glaciers
(ice 48-96 cells across) halving was worse than the grid as given on 13 of 19 (1.6)."""

REFINE_LEVELS_MAX = 25
"""Solver refinement (``refine=N``) of a single prediction starts from the network's levels (a
depth-averaged model's: those of the 3-D model it was made from, ``levels_model``) for N up to
this many iterations, and from the shallow-ice vertical profile of the network's depth average
(:func:`~glacier_emulator.physics.sia.sia_shaped_levels`) for more; forward runs
(:class:`~glacier_emulator.dynamics.providers.EmulatorProvider`) always start from the latter.
Chosen on 48 validation glaciers of ``velocity3d-prior`` (twenty-third session,
``training/runs/notes.md``; mean of the two sets' median error of ubar): from the levels 0.042 /
0.030 / 0.017 / 0.013 after 5 / 10 / 20 / 30 iterations, from the profile 0.052 / 0.039 / 0.021 /
0.011; in the bundled example's forward runs (advance and retreat, 5 and 10 iterations a step,
each with the previous step's solver memory) the profile was closer in three of four."""


def dataclass_from_mapping(cls, values, *, what: str):
    """``cls(**values)`` for a dataclass, refusing unknown keys with one clear message.

    ``what`` starts the message, e.g. ``"Unknown physics constant"``.
    """
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{what}(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass(frozen=True)
class Physics:
    """Physical constants of the Blatter-Pattyn model (units: m, yr, MPa).

    The defaults are those of IGM 3 so that both models solve the same problem.

    Args:
        rate_factor: Glen's rate factor A in MPa^-n yr^-1 (78 MPa^-3 yr^-1 is temperate-ish ice at
            about -2 degC; ISMIP-HOM uses 100). A field in the input file overrides it.
        glen_exponent: Glen's exponent n.
        ice_density: rho in kg m^-3.
        gravity: g in m s^-2.
        sliding_coefficient: c in the Weertman law tau_b = c |u_b|^(m-1) u_b, in MPa (m/yr)^-m.
            ``0.0`` is free slip. No-slip is requested with ``no_slip=True``.
        sliding_exponent: m in the Weertman law (1/3 by default; 1 is the linear law of
            ISMIP-HOM C and D).
        no_slip: fix the basal velocity to zero (ISMIP-HOM A and B).
        strain_rate_regularisation: added in quadrature to the effective strain rate, yr^-1.
        sliding_regularisation: added in quadrature to the basal speed, m/yr. With m < 1 the
            Weertman law is infinitely stiff at rest; 0.1 m/yr halves the solver's iterations on
            slowly sliding ice and changes the velocity by about 0.2 % (relative L2, measured on
            a synthetic ice cap) against 1e-3 m/yr.
        thin_ice: thickness (m) under which ice is treated as this thin in the vertical shear
            (avoids division by zero at margins); ice-free means thickness <= 0.

    Example:
        >>> Physics().rho_g  # MPa per metre
        0.0089271
    """

    rate_factor: float = 78.0
    glen_exponent: float = 3.0
    ice_density: float = 910.0
    gravity: float = 9.81
    sliding_coefficient: float = 0.0464
    sliding_exponent: float = 1.0 / 3.0
    no_slip: bool = False
    strain_rate_regularisation: float = 1.0e-5
    sliding_regularisation: float = 0.1
    thin_ice: float = 1.0

    def __post_init__(self):
        checks = {
            "rate_factor": self.rate_factor > 0,
            "glen_exponent": self.glen_exponent >= 1,
            "ice_density": self.ice_density > 0,
            "gravity": self.gravity > 0,
            "sliding_coefficient": self.sliding_coefficient >= 0,
            "sliding_exponent": self.sliding_exponent > 0,
            "strain_rate_regularisation": self.strain_rate_regularisation > 0,
            "sliding_regularisation": self.sliding_regularisation > 0,
            "thin_ice": self.thin_ice > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (ok and np.isfinite(value)):
                raise ValueError(f"Physics.{name} is out of range. Received: {name}={value!r}")

    @property
    def rho_g(self) -> float:
        """rho * g in MPa per metre."""
        return self.ice_density * self.gravity / PA_PER_MPA

    def replace(self, **changes) -> "Physics":
        """A copy with some constants changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> "Physics":
        return dataclass_from_mapping(cls, values, what="Unknown physics constant")


DEFAULT_PHYSICS = Physics()

ISMIP_HOM_PHYSICS = Physics(rate_factor=100.0, no_slip=True, gravity=9.81, ice_density=910.0)
"""Constants of the ISMIP-HOM benchmark (Pattyn et al. 2008): A = 1e-16 Pa^-3 a^-1."""


@dataclass(frozen=True)
class VerticalDiscretisation:
    """Terrain-following levels zeta in [0, 1] (0 = bed, 1 = surface).

    Args:
        levels: number of levels Nz (>= 2); the velocity lives on these levels.
        spacing: ratio of the top layer's thickness to the bottom layer's; 1 is uniform, larger
            values give thinner layers near the bed, where the shear is concentrated (the levels
            follow a quadratic stretching; IGM's default ``vert_spacing=4`` is about 5/3 here).
    """

    levels: int = 10
    spacing: float = 2.0

    def __post_init__(self):
        if int(self.levels) != self.levels or self.levels < 2:
            raise ValueError(f"levels must be an integer >= 2. Received: levels={self.levels!r}")
        if not (self.spacing >= 1.0 and np.isfinite(self.spacing)):
            raise ValueError(f"spacing must be >= 1. Received: spacing={self.spacing!r}")

    @property
    def zeta(self) -> np.ndarray:
        """Level positions zeta_k, increasing from 0 (bed) to 1 (surface)."""
        t = np.linspace(0.0, 1.0, int(self.levels))
        c = 0.5 * (float(self.spacing) - 1.0)
        return (t + c * t * t) / (1.0 + c)

    @property
    def layer_thickness(self) -> np.ndarray:
        """Fractional thickness of the Nz-1 layers between levels (sums to 1)."""
        return np.diff(self.zeta)

    @property
    def depth_average_weights(self) -> np.ndarray:
        """Weights w_k with ubar = sum_k w_k u_k (trapezoidal rule on the levels; sums to 1)."""
        return trapezoid_weights(self.zeta)


def trapezoid_weights(zeta) -> np.ndarray:
    """Weights w_k of the trapezoidal rule on the levels ``zeta`` (0 at the bed, 1 at the surface):
    the depth average of u is sum_k w_k u_k; they sum to 1.

    Example:
        >>> trapezoid_weights([0.0, 0.5, 1.0]).tolist()
        [0.25, 0.5, 0.25]
    """
    dz = np.diff(np.asarray(zeta, float))
    w = np.zeros(len(dz) + 1)
    w[:-1] += 0.5 * dz
    w[1:] += 0.5 * dz
    return w


DEFAULT_VERTICAL = VerticalDiscretisation()
