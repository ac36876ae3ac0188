r"""The mass-conserving time stepper: thickness evolution under any velocity provider.

The ice thickness :math:`H` obeys the continuity equation

.. math:: \frac{\partial H}{\partial t} + \nabla\cdot(\bar{\mathbf u} H) = \dot b

with the depth-averaged velocity :math:`\bar{\mathbf u}` of a
:class:`~glacier_emulator.dynamics.providers.VelocityProvider` and the surface mass balance
:math:`\dot b` (m ice/yr). The bed is fixed; the surface is bed + thickness.

Numerics (one conservative finite-volume update, explicit Euler in time):

.. math::

    H^{k+1}_{ij} = H^k_{ij} + \Delta t\,\Bigl(\dot b_{ij}
        - \frac{F_{i+1/2,j} - F_{i-1/2,j}}{\Delta x}
        - \frac{G_{i,j+1/2} - G_{i,j-1/2}}{\Delta y}\Bigr)

with face fluxes :math:`F = \bar u_f H_f` (m^2/yr). The face velocity :math:`\bar u_f` is the
average of the two neighbouring nodes, or the provider's own face velocity when it has one (the
SIA's staggered, Mahaffy-type velocity). The face thickness :math:`H_f` is the upwind cell's
value (first order), or with ``limiter=True`` the upwind cell's value plus a minmod-limited slope
correction :math:`\tfrac12(1 - |\bar u_f|\Delta t/\Delta x)\,\sigma` (second order where smooth,
no new extrema, and never negative).

Boundaries: on a periodic geometry the faces wrap around. On a finite domain ice leaving
through the domain edge is counted as *outflow* and nothing flows in.

Thickness is kept >= 0: negative values (ablation or outflow exceeding the ice present) are set to
zero and the volume this adds back is counted as *clipped*. The budget then closes exactly, to
round-off:

.. math:: V(t) - V(t_0) = \int \dot b \,\mathrm dA\,\mathrm dt - V_\mathrm{out} + V_\mathrm{clip}

Time step: :math:`\Delta t = \min(\mathrm{CFL}\cdot\min(\Delta x,\Delta y)/\max|\bar u_f|,\
\Delta t_\mathrm{provider},\ \Delta t_\max)`, trimmed to land exactly on the requested (output)
times. The velocity is recomputed every ``velocity_every`` steps, and always at an output time so
that the stored velocity belongs to the stored thickness (this also makes a restart from an
output file repeat the uninterrupted run exactly).

The API follows OGGM's ``sia2d`` models: :meth:`Stepper.step`, :meth:`Stepper.run_until`,
:meth:`Stepper.run_until_and_store`.

Time is in years (noleap calendar); output files carry a CF ``time`` (``days since
0000-01-01 00:00:00``, calendar ``noleap``, so the decoded year is the model year) and a float
``year`` coordinate.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import numpy as np

from ..constants import UNITS
from ..fields import Geometry, InputError, Velocity
from .check import CHECK_DIAGNOSTICS
from .providers import VelocityProvider, faces_from_nodes
from .smb import FieldSMB, SurfaceMassBalance, check_smb_field, smb_from_config

__all__ = ["Stepper", "RunConfig", "TIME_UNITS", "TIME_CALENDAR", "DIAGNOSTICS", "FIELDS", "years_of"]

TIME_UNITS = "days since 0000-01-01 00:00:00"
TIME_CALENDAR = "noleap"
DAYS_PER_YEAR = 365.0
_TIME_EPS = 1e-9  # yr: times closer than this are the same time

# NetCDF metadata of the run diagnostics: name -> (long_name, units). The gridded fields take
# theirs from the I/O module's table (glacier_emulator.io.netcdf.VARIABLES).
DIAGNOSTICS = {
    "volume": ("ice volume", UNITS["volume"]),
    "area": ("ice-covered area", UNITS["area"]),
    "smb_volume": ("surface mass balance integrated over the domain since the start",
                   UNITS["volume"]),
    "outflow_volume": ("ice volume that left through the domain edges since the start",
                       UNITS["volume"]),
    "clipped_volume": ("ice volume added back by clipping negative thickness to zero since the "
                       "start (ablation or outflow in excess of the ice present)", UNITS["volume"]),
    "budget_residual": ("mass-budget residual: volume change since the start - (smb_volume - "
                        "outflow_volume + clipped_volume)", UNITS["volume"]),
    "max_speed": ("largest depth-averaged speed over the ice", UNITS["velocity"]),
    "dt": ("length of the last time step before this record", UNITS["time"]),
    "n_steps": ("number of time steps since the start", "1"),
}
FIELDS = ("thk", "usurf", "ubar", "vbar", "velbar_mag", "smb")
"""Gridded output variables on (time, y, x)."""


def years_of(time_values, attrs: Optional[dict] = None) -> np.ndarray:
    """Model years (float) from a time coordinate: floats in years, cftime dates, or raw CF
    numbers with ``units``/``calendar`` attributes."""
    import cftime

    values = np.atleast_1d(np.asarray(time_values))
    if values.dtype.kind == "O":
        days = cftime.date2num(list(values), TIME_UNITS, calendar=TIME_CALENDAR, has_year_zero=True)
        return np.asarray(days, float) / DAYS_PER_YEAR
    if values.dtype.kind == "M":
        raise ValueError("time is a numpy datetime64; open the file with decode_times=False or use_cftime")
    from .smb import years_from_cf

    return years_from_cf(values.astype(float), attrs)


def _cf_time(years: np.ndarray):
    import cftime

    return cftime.num2date(np.asarray(years, float) * DAYS_PER_YEAR, TIME_UNITS,
                           calendar=TIME_CALENDAR, has_year_zero=True)


def _minmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(a * b > 0, np.sign(a) * np.minimum(np.abs(a), np.abs(b)), 0.0)


def _face_states(h: np.ndarray, *, periodic: bool, limiter: bool, courant: Optional[np.ndarray]):
    """Left and right thickness states on the ``nx+1`` faces along the last axis.

    Face ``k`` lies between cells ``k-1`` (left) and ``k`` (right). Ghost cells: wrap-around
    (periodic) or a copy of the edge cell (finite: zero gradient for the reconstruction; inflow
    through the edge is removed by the caller).
    """
    n = h.shape[-1]
    pad = [(0, 0)] * (h.ndim - 1) + [(2, 2)]
    hp = np.pad(h, pad, mode="wrap" if periodic else "edge")
    left = hp[..., 1:n + 2]
    right = hp[..., 2:n + 3]
    if not limiter:
        return left, right
    d = np.diff(hp, axis=-1)  # d[p] = hp[p+1] - hp[p]
    sigma = _minmod(d[..., :-1], d[..., 1:])  # slope of padded cells 1 .. n+2
    factor = 0.5 * (1.0 - np.clip(courant, 0.0, 1.0))
    return left + factor * sigma[..., 0:n + 1], right - factor * sigma[..., 1:n + 2]


@dataclass(frozen=True)
class RunConfig:
    """Settings of a transient run (loaded from YAML or built in code; CLI flags override).

    Args:
        years: length of the run (yr), >= 0.
        start_time: model time at the start (yr).
        save_every: interval between saved records (yr), > 0.
        velocity: ``'emulator'``, ``'solver'``, ``'sia'``, or None (the emulator if a pretrained
            model exists, else the SIA).
        cfl: Courant number of the advective time step, > 0.
        dt_max: largest time step (yr), > 0.
        velocity_every: recompute the velocity every this many steps (>= 1).
        limiter: second-order minmod reconstruction of the face thickness.
        check_domain_edges: raise if the ice touches the domain edge at the start.
        smb: SMB config (see :func:`~glacier_emulator.dynamics.smb.smb_from_config`), or
            ``"input"`` (the input file's ``smb`` field); None: that field if any, else zero.
        physics: overrides of :class:`~glacier_emulator.constants.Physics` constants.
        vertical: settings of :class:`~glacier_emulator.constants.VerticalDiscretisation` (for the
            solver provider).
        solver: settings of :class:`~glacier_emulator.numerics.solver.SolverConfig`.
        check_every: compare the velocity with the reference solver's every this many years
            (at output records: a multiple of ``save_every``); None: no check
            (:class:`~glacier_emulator.dynamics.check.VelocityCheck`).
    """

    years: float = 50.0
    start_time: float = 0.0
    save_every: float = 10.0
    velocity: Optional[str] = None
    cfl: float = 0.3
    dt_max: float = 1.0
    velocity_every: int = 1
    limiter: bool = False
    check_domain_edges: bool = False
    smb: Optional[dict] = None
    physics: Optional[dict] = None
    vertical: Optional[dict] = None
    solver: Optional[dict] = None
    check_every: Optional[float] = None

    def __post_init__(self):
        def bad(name, rule):
            raise ValueError(f"{name} must be {rule}. Received: {name}={getattr(self, name)!r}")

        if not (_finite(self.years) and self.years >= 0):
            bad("years", "a number of years >= 0")
        if not _finite(self.start_time):
            bad("start_time", "a finite number of years")
        if not (_finite(self.save_every) and self.save_every > 0):
            bad("save_every", "> 0 years")
        if not (_finite(self.cfl) and self.cfl > 0):
            bad("cfl", "> 0")
        if not (_finite(self.dt_max) and self.dt_max > 0):
            bad("dt_max", "> 0 years")
        if self.check_every is not None:
            if not (_finite(self.check_every) and self.check_every > 0):
                bad("check_every", "> 0 years")
            ratio = float(self.check_every) / float(self.save_every)
            if abs(ratio - round(ratio)) > 1e-6:
                bad("check_every", f"a multiple of save_every ({self.save_every:g} years): checks "
                    "happen at saved records")
        if int(self.velocity_every) != self.velocity_every or self.velocity_every < 1:
            bad("velocity_every", "an integer >= 1")
        if self.velocity is not None:
            from .providers import PROVIDERS

            if str(self.velocity).lower() not in PROVIDERS:
                raise ValueError(
                    f"Unknown velocity provider {self.velocity!r}; valid: {', '.join(PROVIDERS)}"
                )
        if self.smb is not None and self.smb != "input" and not isinstance(self.smb, (dict, int, float)):
            bad("smb", "a mapping (an SMB config), a number or 'input'")
        for name in ("physics", "vertical", "solver"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                bad(name, "a mapping of settings")

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "RunConfig":
        from ..constants import dataclass_from_mapping

        return dataclass_from_mapping(cls, values, what="Unknown run setting")

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike]) -> "RunConfig":
        from ..io.yaml_config import read_yaml_mapping

        values = read_yaml_mapping(path, what="run config")
        try:
            return cls.from_dict(values)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def stepper_settings(self) -> dict:
        """The numerical settings a :class:`Stepper` takes (also when continuing a run)."""
        return dict(cfl=float(self.cfl), dt_max=float(self.dt_max),
                    velocity_every=int(self.velocity_every), limiter=bool(self.limiter))

    def replace(self, **changes) -> "RunConfig":
        """A copy with the given settings changed; ``None`` values are ignored (unset flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


SMBLike = Union[None, float, np.ndarray, dict, SurfaceMassBalance]


def _as_smb(smb: SMBLike, geometry: Geometry) -> Optional[SurfaceMassBalance]:
    if smb is None:
        return FieldSMB(geometry.smb) if geometry.smb is not None else None
    if isinstance(smb, dict):
        return smb_from_config(smb)
    if isinstance(smb, (int, float, np.ndarray)) and not isinstance(smb, bool):
        return FieldSMB(smb)
    if callable(getattr(smb, "smb", None)):
        return smb
    raise ValueError(
        "smb must be None, a number or field (m ice/yr), an SMB config mapping, or an object with "
        f"smb(geometry, time). Received: {type(smb).__name__}"
    )


class Stepper:
    r"""Evolve a glacier's thickness with a velocity provider and an SMB model.

    Args:
        geometry: the initial glacier (its bed stays fixed).
        provider: the ice-flow model (:mod:`glacier_emulator.dynamics.providers`).
        smb: an SMB model, a config mapping, a number or a field (m ice/yr); None uses
            ``geometry.smb`` if present, else no SMB.
        cfl: Courant number, ``dt <= cfl * min(dx, dy) / max|u_face|`` (> 0).
        dt_max: largest time step (yr, > 0).
        velocity_every: recompute the velocity every this many steps (>= 1).
        start_time: model time at the start (yr).
        limiter: minmod-limited second-order face thickness (default first-order upwind).
        check_domain_edges: on a finite domain, raise :class:`~glacier_emulator.fields.InputError`
            if ice touches the domain edge at the start (by default only a warning: ice at the
            edge flows out and is counted as outflow). Ice that first reaches the edge during
            the run (by flow or by the mass balance) gets one warning, naming the year.
        check: a :class:`~glacier_emulator.dynamics.check.VelocityCheck`: at the output records
            of :meth:`run_until_and_store` that fall on its interval, the velocity is compared
            with the reference solver's and the difference stored (``velocity_check_*``); the
            run itself is unchanged.

    Example:
        >>> from glacier_emulator.dynamics import PrescribedVelocity
        >>> g = Geometry(thickness=np.pad(np.ones((3, 3)), 2), bed=np.zeros((7, 7)), dx=10.0)
        >>> s = Stepper(g, PrescribedVelocity(1.0, 0.0), dt_max=0.5)
        >>> s.run_until(2.0)
        >>> s.t, round(s.volume + s.outflow_volume, 6)  # what left through the east edge counts
        (2.0, 900.0)
    """

    def __init__(
        self,
        geometry: Geometry,
        provider: VelocityProvider,
        smb: SMBLike = None,
        *,
        cfl: float = 0.3,
        dt_max: float = 1.0,
        velocity_every: int = 1,
        start_time: float = 0.0,
        limiter: bool = False,
        check_domain_edges: bool = False,
        check=None,
    ):
        if not isinstance(geometry, Geometry):
            raise ValueError(f"geometry must be a Geometry. Received: {type(geometry).__name__}")
        if not (callable(getattr(provider, "velocity", None))
                and callable(getattr(provider, "max_time_step", None))):
            raise ValueError(
                "provider must have velocity(geometry) and max_time_step(geometry, velocity) "
                f"methods. Received: {type(provider).__name__}"
            )
        if not (_finite(cfl) and cfl > 0):
            raise ValueError(f"cfl must be > 0. Received: cfl={cfl!r}")
        if not (_finite(dt_max) and dt_max > 0):
            raise ValueError(f"dt_max must be > 0 years. Received: dt_max={dt_max!r}")
        if int(velocity_every) != velocity_every or velocity_every < 1:
            raise ValueError(f"velocity_every must be an integer >= 1. Received: {velocity_every!r}")
        if not _finite(start_time):
            raise ValueError(f"start_time must be a finite number of years. Received: {start_time!r}")
        if check is not None and not callable(getattr(check, "measure", None)):
            raise ValueError(f"check must be a VelocityCheck. Received: {type(check).__name__}")
        self.provider = provider
        self.check = check
        self.smb_model = _as_smb(smb, geometry)
        self.cfl = float(cfl)
        self.dt_max = float(dt_max)
        self.velocity_every = int(velocity_every)
        self.limiter = bool(limiter)
        self.t = float(start_time)
        self.start_time = float(start_time)
        self._geometry = geometry
        self._check_edges(raise_error=bool(check_domain_edges))
        # check the SMB once, now: a wrong shape is a configuration error
        self._current_smb()
        self.velocity: Optional[Velocity] = None
        self._faces = None
        self._provider_dt: Optional[float] = None
        self._velocity_age = 0
        self.velocity_evaluations = 0
        self.initial_volume = self.volume
        self.smb_volume = 0.0
        self.outflow_volume = 0.0
        self.clipped_volume = 0.0
        self.n_steps = 0
        self.last_dt = float("nan")

    # ---------------------------------------------------------------- state
    @property
    def geometry(self) -> Geometry:
        """The current glacier (bed fixed, thickness evolving)."""
        return self._geometry

    @property
    def thickness(self) -> np.ndarray:
        return self._geometry.thickness

    @property
    def surface(self) -> np.ndarray:
        return self._geometry.surface

    @property
    def yr(self) -> float:
        """Current model time (yr); OGGM's name for :attr:`t`."""
        return self.t

    @property
    def volume(self) -> float:
        """Ice volume (m^3)."""
        return float(np.sum(self._geometry.thickness) * self._geometry.cell_area)

    @property
    def area(self) -> float:
        """Ice-covered area (m^2)."""
        return float(np.count_nonzero(self._geometry.thickness > 0) * self._geometry.cell_area)

    @property
    def budget_residual(self) -> float:
        """Volume change minus (SMB - outflow + clipped) since the start (m^3); round-off."""
        return (self.volume - self.initial_volume) - (
            self.smb_volume - self.outflow_volume + self.clipped_volume
        )

    def _ice_at_edge(self) -> bool:
        """Whether ice lies on a node of the domain edge (never on a periodic domain)."""
        g = self._geometry
        if g.periodic:
            return False
        h = g.thickness
        return bool(np.any(h[0] > 0) or np.any(h[-1] > 0) or np.any(h[:, 0] > 0) or np.any(h[:, -1] > 0))

    def _check_edges(self, *, raise_error: bool) -> None:
        self._edge_reached = self._ice_at_edge()
        if not self._edge_reached:
            return
        message = (
            "ice touches the domain edge at the start; ice reaching the edge flows out of the "
            "domain (counted as outflow). Pad the domain with ice-free cells for a closed glacier."
        )
        if raise_error:
            raise InputError(message)
        warnings.warn(message, stacklevel=3)

    def _current_smb(self) -> np.ndarray:
        if self.smb_model is None:
            return np.zeros(self._geometry.shape)
        return check_smb_field(self.smb_model.smb(self._geometry, self.t), self._geometry.shape)

    # ---------------------------------------------------------------- velocity
    def refresh_velocity(self) -> Velocity:
        """Recompute the velocity (and face velocities, stability bound) for the current state."""
        g = self._geometry
        vel = self.provider.velocity(g)
        if vel.ubar.shape != g.shape or vel.vbar.shape != g.shape:
            raise ValueError(
                f"velocity provider returned ubar {vel.ubar.shape} / vbar {vel.vbar.shape}; "
                f"expected {g.shape} (the grid)"
            )
        faces = None
        face_fn = getattr(self.provider, "face_velocity", None)
        if callable(face_fn):
            faces = face_fn(g, vel)
        if faces is None:
            faces = faces_from_nodes(vel.ubar, vel.vbar, periodic=g.periodic)
        u_f, v_f = (np.asarray(f, float) for f in faces)
        ny, nx = g.shape
        if u_f.shape != (ny, nx + 1) or v_f.shape != (ny + 1, nx):
            raise ValueError(
                f"face velocities have shapes {u_f.shape}, {v_f.shape}; expected {(ny, nx + 1)}, "
                f"{(ny + 1, nx)}"
            )
        if not (np.all(np.isfinite(u_f)) and np.all(np.isfinite(v_f))):
            raise ValueError("the velocity provider returned NaN or infinite velocities")
        self.velocity = vel
        self._faces = (u_f, v_f)
        bound = self.provider.max_time_step(g, vel)
        self._provider_dt = None if bound is None else float(bound)
        self._velocity_age = 0
        self.velocity_evaluations += 1
        return vel

    def _ensure_velocity(self) -> None:
        if self.velocity is None or self._velocity_age >= self.velocity_every:
            self.refresh_velocity()

    def _advective_time_step(self) -> float:
        """CFL bound over the faces next to ice (faces between two ice-free cells move nothing)."""
        h = self._geometry.thickness
        u_f, v_f = self._faces
        per = self._geometry.periodic
        pad_x = np.pad(h, ((0, 0), (1, 1)), mode="wrap" if per else "edge")
        pad_y = np.pad(h, ((1, 1), (0, 0)), mode="wrap" if per else "edge")
        near_x = (pad_x[:, :-1] > 0) | (pad_x[:, 1:] > 0)
        near_y = (pad_y[:-1, :] > 0) | (pad_y[1:, :] > 0)
        umax = max(
            float(np.max(np.abs(u_f[near_x]), initial=0.0)),
            float(np.max(np.abs(v_f[near_y]), initial=0.0)),
        )
        if umax <= 0:
            return float("inf")
        return self.cfl * min(self._geometry.dx, self._geometry.dy) / umax

    def stable_time_step(self) -> float:
        """The time step the next step would take without an end time (yr)."""
        self._ensure_velocity()
        dt = min(self._advective_time_step(), self.dt_max)
        if self._provider_dt is not None:
            if not self._provider_dt > 0:
                raise ValueError(f"velocity provider reported a time step bound {self._provider_dt!r}")
            dt = min(dt, self._provider_dt)
        return dt

    # ---------------------------------------------------------------- stepping
    def step(self, dt: float) -> float:
        """Advance one time step of at most ``dt`` years; returns the step actually taken."""
        if not (_finite(dt) and dt > 0):
            raise ValueError(f"dt must be > 0 years. Received: dt={dt!r}")
        dt_used = min(float(dt), self.stable_time_step())
        smb = self._current_smb()
        self._update(dt_used, smb)
        self.t = self.t + dt_used
        if not self._edge_reached and self._ice_at_edge():
            self._edge_reached = True
            warnings.warn(
                f"ice reached the domain edge at year {self.t:.6g} (by flow or by the mass "
                "balance); it flows out there (counted as outflow), and the velocity near the edge "
                "depends on that boundary, where emulators are also less accurate (model cards: "
                "'Where the ubar error lies'). For a glacier that should stay inside, use a larger "
                "domain.",
                stacklevel=2)
        return dt_used

    def _fluxes(self, dt: float):
        g = self._geometry
        h = g.thickness
        u_f, v_f = self._faces
        per = g.periodic
        cx = np.abs(u_f) * dt / g.dx if self.limiter else None
        cy = np.abs(v_f.T) * dt / g.dy if self.limiter else None
        lx, rx = _face_states(h, periodic=per, limiter=self.limiter, courant=cx)
        ly, ry = _face_states(h.T, periodic=per, limiter=self.limiter, courant=cy)
        fx = np.where(u_f > 0, u_f * lx, u_f * rx)
        fy = np.where(v_f > 0, v_f * ly.T, v_f * ry.T)
        if not per:  # no inflow through the domain edges
            fx[:, 0] = np.minimum(fx[:, 0], 0.0)
            fx[:, -1] = np.maximum(fx[:, -1], 0.0)
            fy[0, :] = np.minimum(fy[0, :], 0.0)
            fy[-1, :] = np.maximum(fy[-1, :], 0.0)
        return fx, fy

    def _update(self, dt: float, smb: np.ndarray) -> None:
        g = self._geometry
        fx, fy = self._fluxes(dt)
        divergence = np.diff(fx, axis=1) / g.dx + np.diff(fy, axis=0) / g.dy
        thickness = g.thickness + dt * (smb - divergence)
        if g.periodic:
            outflow = 0.0
        else:
            outflow = dt * (
                (np.sum(-fx[:, 0]) + np.sum(fx[:, -1])) * g.dy
                + (np.sum(-fy[0, :]) + np.sum(fy[-1, :])) * g.dx
            )
        negative = thickness < 0
        clipped = float(-np.sum(thickness[negative]) * g.cell_area)
        thickness[negative] = 0.0
        self.smb_volume += float(dt * np.sum(smb) * g.cell_area)
        self.outflow_volume += float(outflow)
        self.clipped_volume += clipped
        self._geometry = g.with_thickness(thickness)
        self._velocity_age += 1
        self.n_steps += 1
        self.last_dt = dt

    def run_until(self, t: float, *, on_step: Optional[Callable[["Stepper"], None]] = None) -> None:
        """Advance to model time ``t`` (yr), landing on it exactly."""
        if not _finite(t):
            raise ValueError(f"t must be a finite time in years. Received: {t!r}")
        t = float(t)
        if t < self.t - _TIME_EPS:
            raise ValueError(
                f"cannot run backwards: the model is at year {self.t!r}, asked for year {t!r} "
                f"(a negative number of years)"
            )
        while t - self.t > _TIME_EPS:
            remaining = t - self.t
            dt = self.step(remaining)
            if dt >= remaining:
                self.t = t
            if on_step is not None:
                on_step(self)
        self.t = max(self.t, t)

    # ---------------------------------------------------------------- output
    def record(self) -> dict:
        """The current state as one output record (refreshes a stale velocity first)."""
        if self.velocity is None or self._velocity_age > 0:
            self.refresh_velocity()
        g = self._geometry
        vel = self.velocity
        ice = g.thickness > 0
        ubar = np.where(ice, np.asarray(vel.ubar, float), 0.0)
        vbar = np.where(ice, np.asarray(vel.vbar, float), 0.0)
        speed = np.hypot(ubar, vbar)
        return {
            "year": self.t,
            "thk": g.thickness.copy(),
            "usurf": g.surface,
            "ubar": ubar,
            "vbar": vbar,
            "velbar_mag": speed,
            "smb": self._current_smb(),
            "volume": self.volume,
            "area": self.area,
            "smb_volume": self.smb_volume,
            "outflow_volume": self.outflow_volume,
            "clipped_volume": self.clipped_volume,
            "budget_residual": self.budget_residual,
            "max_speed": float(np.max(speed[ice], initial=0.0)),
            "dt": self.last_dt,
            "n_steps": self.n_steps,
        }

    def to_dataset(self, records: List[dict]):
        """An xarray Dataset of output records (CF-1.8, ``units`` and ``long_name`` everywhere).

        The static fields, coordinates, grid mapping and global attributes come from
        :func:`glacier_emulator.io.netcdf.geometry_to_dataset`, the gridded fields' metadata from
        its table; the thickness, surface, velocity and SMB become time series.
        """
        import xarray as xr

        from ..io.netcdf import VARIABLES as IO_VARIABLES
        from ..io.netcdf import geometry_to_dataset

        g = self._geometry
        ds = geometry_to_dataset(g.replace(smb=None))
        ds = ds.drop_vars([name for name in ("thk", "usurf") if name in ds])
        mapping = ds["topg"].attrs.get("grid_mapping")
        years = np.array([r["year"] for r in records], float)
        time = xr.Variable(("time",), _cf_time(years), {"standard_name": "time", "long_name": "time"})
        time.encoding.update(units=TIME_UNITS, calendar=TIME_CALENDAR, dtype="float64")
        ds = ds.assign_coords(
            time=time,
            year=xr.Variable(("time",), years, {"long_name": "model time in years (noleap calendar)",
                                                "units": UNITS["time"]}),
        )
        for name in FIELDS:
            attrs = dict(IO_VARIABLES[name].attrs)
            if mapping:
                attrs["grid_mapping"] = mapping
            ds[name] = xr.Variable(("time", "y", "x"), np.stack([r[name] for r in records]), attrs)
        for name, (long_name, units) in DIAGNOSTICS.items():
            dtype = np.int64 if name == "n_steps" else float
            ds[name] = xr.Variable(("time",), np.array([r[name] for r in records], dtype),
                                   {"long_name": long_name, "units": units})
        if self.check is not None:  # only a checked run's records carry these (NaN: no check)
            for name, (long_name, units) in CHECK_DIAGNOSTICS.items():
                values = np.array([r.get(name, np.nan) for r in records], float)
                ds[name] = xr.Variable(("time",), values, {"long_name": long_name, "units": units})
        smb_name = "none" if self.smb_model is None else type(self.smb_model).__name__
        ds.attrs.update({
            "title": "glacier_emulator transient run",
            "velocity_provider": str(getattr(self.provider, "name", type(self.provider).__name__)),
            "smb_model": smb_name,
            "cfl": self.cfl,
            "dt_max": self.dt_max,
            "velocity_every": self.velocity_every,
            "limiter": int(self.limiter),
            "dx": g.dx,
            "dy": g.dy,
            "start_time": self.start_time,
            "initial_volume": self.initial_volume,
        })
        describe = getattr(self.provider, "describe", None)
        if callable(describe):
            ds.attrs.update(describe())
        if self.check is not None:
            ds.attrs["velocity_check_every"] = self.check.every
            ds.attrs["velocity_check_reference"] = self.check.name
        return ds

    def run_until_and_store(
        self,
        t: float,
        every: float = 1.0,
        *,
        on_save: Optional[Callable[[object], None]] = None,
        on_step: Optional[Callable[["Stepper"], None]] = None,
    ):
        """Run to model time ``t`` (yr), saving the state now and every ``every`` years.

        The records are at ``t0, t0 + every, ...`` and at ``t``; time steps are trimmed to land on
        them. ``on_save(dataset)`` is called with the Dataset so far after each record (e.g. to
        write the file, so that a crash leaves the last complete one); ``on_step(stepper)`` after
        each step (e.g. a progress bar).

        Returns:
            ``xarray.Dataset`` with ``thk``, ``usurf``, ``ubar``, ``vbar``, ``velbar_mag``,
            ``smb`` on ``(time, y, x)``, ``topg``, and the diagnostics ``volume``, ``area``,
            ``smb_volume``, ``outflow_volume``, ``clipped_volume``, ``budget_residual``,
            ``max_speed``, ``dt``, ``n_steps`` on ``time``; with a ``check``, also
            ``velocity_check_error``, ``velocity_check_max_speed_difference``, where the
            difference lies (``velocity_check_error_interior``,
            ``velocity_check_error_share_margin``, ``velocity_check_error_share_edge``) and
            ``velocity_check_wall_time`` (NaN at records without a check).
        """
        if not _finite(t):
            raise ValueError(f"t must be a finite time in years. Received: {t!r}")
        if not (_finite(every) and every > 0):
            raise ValueError(f"every must be > 0 years. Received: every={every!r}")
        t = float(t)
        if t < self.t - _TIME_EPS:
            raise ValueError(
                f"cannot run backwards: the model is at year {self.t!r}, asked for year {t!r} "
                f"(a negative number of years)"
            )
        t0 = self.t
        count = int(math.floor((t - t0) / every + 1e-9))
        times = [t0 + k * every for k in range(count + 1)]
        if t - times[-1] > _TIME_EPS:
            times.append(t)
        records = []
        for target in times:
            self.run_until(target, on_step=on_step)
            record = self.record()
            if self.check is not None and self.check.due(self.t, self.start_time):
                record.update(self.check.measure(self._geometry, self.velocity))
            records.append(record)
            if on_save is not None:
                on_save(self.to_dataset(records))
        return self.to_dataset(records)

    @classmethod
    def from_config(cls, geometry: Geometry, provider: VelocityProvider, config: RunConfig,
                    smb: SMBLike = None, check=None) -> "Stepper":
        """A stepper with a :class:`RunConfig`'s settings: start time, time stepping
        (:meth:`RunConfig.stepper_settings`) and the domain-edge check.

        ``smb`` (a model, field, number or mapping) overrides ``config.smb``; with neither, or
        with ``config.smb == "input"``, the geometry's own SMB field is used (if any). ``check``:
        a :class:`~glacier_emulator.dynamics.check.VelocityCheck` (``config.check_every`` is
        the interval the command line gives it).

        Example:
            >>> from glacier_emulator.data import example_config, example_geometry
            >>> from glacier_emulator.dynamics import SIAProvider
            >>> s = Stepper.from_config(example_geometry(), SIAProvider(), example_config())
            >>> s.t, s.cfl, type(s.smb_model).__name__
            (2000.0, 0.3, 'ELASMB')
        """
        if smb is None and config.smb != "input":
            smb = config.smb
        return cls(geometry, provider, smb, start_time=float(config.start_time),
                   check_domain_edges=bool(config.check_domain_edges), check=check,
                   **config.stepper_settings())

    # ---------------------------------------------------------------- restart
    @classmethod
    def from_output(
        cls,
        source,
        provider: VelocityProvider,
        smb: SMBLike = None,
        *,
        geometry: Optional[Geometry] = None,
        **kwargs,
    ) -> "Stepper":
        """Continue a run from the last record of an output file or Dataset.

        The time, thickness and the running budgets (SMB, outflow, clipped, step count) are taken
        from the last record; the bed and the grid from ``topg``/``x``/``y`` (or from
        ``geometry``, whose thickness is replaced). Numerical settings default to those stored in
        the file's attributes (``cfl``, ``dt_max``, ``velocity_every``, ``limiter``); keyword
        arguments override them.

        The SMB is not stored as a model: pass the one the run used as ``smb`` (a fixed field,
        :class:`~glacier_emulator.dynamics.smb.FieldSMB`, is recovered from the file when
        ``smb`` is None). With a deterministic provider the continued run repeats the
        uninterrupted one exactly (the velocity is recomputed at every output time).
        """
        import xarray as xr

        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if not os.path.exists(path):
                raise FileNotFoundError(f"restart file not found: {path}")
            with xr.open_dataset(path, decode_times=False) as opened:
                ds = opened.load()
            label = path
        else:
            ds = source
            label = "the restart dataset"
        for name in ("thk",):
            if name not in ds:
                raise InputError(f"{label}: no variable {name!r} to restart from")
        if "time" not in ds["thk"].dims or ds.sizes.get("time", 0) < 1:
            raise InputError(f"{label}: 'thk' has no time records")
        if "year" in ds.coords or "year" in ds:
            years = np.asarray(ds["year"].values, float)
        else:
            years = years_of(ds["time"].values, ds["time"].attrs)
        last = -1
        thickness = np.asarray(ds["thk"].isel(time=last).values, float)
        thickness = np.maximum(thickness, 0.0)
        if geometry is None:
            if "topg" not in ds:
                raise InputError(f"{label}: no 'topg' (bed) to restart from; pass geometry=")
            bed = ds["topg"]
            bed = bed.isel(time=last) if "time" in bed.dims else bed
            x = np.asarray(ds["x"].values, float)
            y = np.asarray(ds["y"].values, float)
            dx = float(ds.attrs.get("dx", abs(x[1] - x[0]) if x.size > 1 else 1.0))
            dy = float(ds.attrs.get("dy", abs(y[1] - y[0]) if y.size > 1 else dx))
            sliding = ds["slidingco"].values if "slidingco" in ds else ds.attrs.get("sliding_coefficient")
            rate = ds["arrhenius"].values if "arrhenius" in ds else ds.attrs.get("rate_factor")
            geometry = Geometry(
                thickness=thickness, bed=np.asarray(bed.values, float), dx=dx, dy=dy, x=x, y=y,
                sliding_coefficient=sliding, rate_factor=rate,
                periodic=ds.attrs.get("periodic_boundaries") == "yes",
            )
        else:
            if geometry.shape != thickness.shape:
                raise InputError(
                    f"{label}: thickness has shape {thickness.shape}; the geometry has {geometry.shape}"
                )
            geometry = geometry.with_thickness(thickness)
        stored_smb = str(ds.attrs.get("smb_model", "none"))
        if smb is None and stored_smb == "FieldSMB" and "smb" in ds:
            smb = FieldSMB(np.asarray(ds["smb"].isel(time=last).values, float))
        elif smb is None and stored_smb not in ("none", "FieldSMB"):
            raise ValueError(
                f"{label}: the run used a {stored_smb} surface mass balance; pass smb= (the same "
                "model) to continue it"
            )
        settings = {}
        for key, cast in (("cfl", float), ("dt_max", float), ("velocity_every", int),
                          ("limiter", lambda v: bool(int(v)))):
            if key in ds.attrs:
                settings[key] = cast(ds.attrs[key])
        settings.update(kwargs)
        settings["start_time"] = float(years[last])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # edge warnings were given at the original start
            stepper = cls(geometry, provider, smb, **settings)
        stepper.start_time = float(ds.attrs.get("start_time", years[0]))

        def last_value(name, default=0.0):
            return float(ds[name].isel(time=last).values) if name in ds else default

        stepper.smb_volume = last_value("smb_volume")
        stepper.outflow_volume = last_value("outflow_volume")
        stepper.clipped_volume = last_value("clipped_volume")
        stepper.n_steps = int(last_value("n_steps", 0))
        stepper.last_dt = last_value("dt", float("nan"))
        if "initial_volume" in ds.attrs:
            stepper.initial_volume = float(ds.attrs["initial_volume"])
        elif "volume" in ds and "budget_residual" in ds:
            stepper.initial_volume = last_value("volume") - last_value("budget_residual") - (
                stepper.smb_volume - stepper.outflow_volume + stepper.clipped_volume
            )
        return stepper
