"""Checking a run's velocity against the reference solver on the run's own glacier.

An emulator's model card states its error on held-out synthetic glaciers; what a modeller needs
is its error on *their* glacier, along *their* run. :class:`VelocityCheck` measures that at
chosen output times: the reference provider (the converged Blatter-Pattyn solver) solves the
geometry the run has reached, and the difference from the run's velocity is recorded. The check
only reads the state: the run evolves exactly as without it.

Example (``geometry`` a :class:`~glacier_emulator.fields.Geometry`)::

    from glacier_emulator.dynamics import SIAProvider, SolverProvider, Stepper, VelocityCheck

    stepper = Stepper(geometry, SIAProvider(), check=VelocityCheck(SolverProvider(), every=10.0))
    ds = stepper.run_until_and_store(50.0, every=10.0)
    ds["velocity_check_error"].values   # relative L2 of (ubar, vbar) on the ice, per record
    ds["velocity_check_error_interior"].values   # the same away from the margin and domain edge

Where the difference lies is stored too: on the interior ice alone, and the shares of the
squared difference within 2 nodes of ice-free ground and within 3 of the domain edge
(:mod:`glacier_emulator.verification.error_location`): an emulator is least accurate at steep
fronts and where the ice meets the domain edge.

(``glacier-emulator run --check-every 10`` does the same from the command line.)
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from ..constants import UNITS
from ..fields import Geometry, Velocity, relative_l2
from ..verification.error_location import error_by_location

__all__ = ["VelocityCheck", "CHECK_DIAGNOSTICS"]

_TIME_EPS = 1e-6  # yr

# NetCDF metadata of the check's diagnostics: name -> (long_name, units). Records without a check
# hold NaN.
CHECK_DIAGNOSTICS = {
    "velocity_check_error": (
        "relative L2 difference of the run's depth-averaged velocity (ubar, vbar) from the "
        "reference solver's on the ice of this record's geometry", "1"),
    "velocity_check_max_speed_difference": (
        "largest difference of depth-averaged speed from the reference solver's on the ice",
        UNITS["velocity"]),
    "velocity_check_error_interior": (
        "relative L2 difference of (ubar, vbar) from the reference solver's on the interior ice: "
        "at least 3 nodes from ice-free nodes and from the domain edge", "1"),
    "velocity_check_error_share_margin": (
        "share of the squared difference of (ubar, vbar) on ice within 2 nodes of an ice-free "
        "node (and not within 3 of the domain edge)", "1"),
    "velocity_check_error_share_edge": (
        "share of the squared difference of (ubar, vbar) on ice within 3 nodes of the domain edge",
        "1"),
    "velocity_check_wall_time": ("wall-clock time of the reference solve", "s"),
}


def _nan_if_none(value) -> float:
    return float("nan") if value is None else float(value)


class VelocityCheck:
    """Compare a run's velocity with a reference provider every ``every`` years.

    Args:
        reference: the provider to compare with, normally a
            :class:`~glacier_emulator.dynamics.providers.SolverProvider`.
        every: years between checks, counted from the run's start; a check happens at an output
            record whose time is a multiple of it (so make it a multiple of the output interval).
        from_rest: before each check, ``reset()`` the reference (where it has that method), so
            that every check is a solve from rest, independent of the previous one. Checks lie
            years apart: a warm start from the previous check's state was slower than a start
            from rest (the example's 50-year run, 2010-2050: 23-86 s per solve against 12 s;
            ``training/runs/notes.md``, twenty-first session).
    """

    def __init__(self, reference, every: float, from_rest: bool = True):
        if not callable(getattr(reference, "velocity", None)):
            raise ValueError("reference must have a velocity(geometry) method. "
                             f"Received: {type(reference).__name__}")
        if not (isinstance(every, (int, float)) and math.isfinite(every) and every > 0):
            raise ValueError(f"every must be > 0 years. Received: every={every!r}")
        self.reference = reference
        self.every = float(every)
        self.from_rest = bool(from_rest)
        self.name = str(getattr(reference, "name", type(reference).__name__))

    def due(self, t: float, start_time: float) -> bool:
        """Whether model time ``t`` is a check time of a run that started at ``start_time``."""
        k = (t - start_time) / self.every
        return abs(k - round(k)) * self.every < _TIME_EPS

    def measure(self, geometry: Geometry, velocity: Velocity) -> dict:
        """The check diagnostics (:data:`CHECK_DIAGNOSTICS`) of ``velocity`` on ``geometry``."""
        reset = getattr(self.reference, "reset", None)
        if self.from_rest and callable(reset):
            reset()
        start = time.perf_counter()
        reference = self.reference.velocity(geometry)
        wall = time.perf_counter() - start
        ice = np.asarray(geometry.thickness) > 0
        result = {name: float("nan") for name in CHECK_DIAGNOSTICS}
        result["velocity_check_wall_time"] = wall
        if not ice.any():
            return result
        ours = np.stack([np.asarray(velocity.ubar, float), np.asarray(velocity.vbar, float)])
        ref = np.stack([np.asarray(reference.ubar, float), np.asarray(reference.vbar, float)])
        speed_difference = np.abs(np.hypot(*ours) - np.hypot(*ref))[ice]
        where = error_by_location(ours, ref, geometry.thickness, periodic=geometry.periodic)
        result.update({
            "velocity_check_error": float(relative_l2(ours[:, ice], ref[:, ice])),
            "velocity_check_max_speed_difference": float(speed_difference.max()),
            "velocity_check_error_interior": _nan_if_none(where["rel_l2_interior"]),
            "velocity_check_error_share_margin": _nan_if_none(where["error_share"]["margin"]),
            "velocity_check_error_share_edge": _nan_if_none(where["error_share"]["edge"]),
        })
        return result

    @staticmethod
    def summary(dataset) -> Optional[str]:
        """One line listing the checked records of a run's Dataset, or None if none was checked."""
        if "velocity_check_error" not in dataset:
            return None
        years = np.asarray(dataset["year"].values, float)
        errors = np.asarray(dataset["velocity_check_error"].values, float)
        interior = (np.asarray(dataset["velocity_check_error_interior"].values, float)
                    if "velocity_check_error_interior" in dataset else np.full(errors.shape, np.nan))
        checked = [(year, err, inner) for year, err, inner in zip(years, errors, interior) if np.isfinite(err)]
        if not checked:
            return None
        return ", ".join(f"{err:.3f} (year {year:g}" + (f", interior {inner:.3f})" if np.isfinite(inner) else ")")
                         for year, err, inner in checked)
