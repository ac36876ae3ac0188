"""Velocity providers: the emulator, the reference solver and the SIA behind one interface.

A provider turns a :class:`~glacier_emulator.fields.Geometry` into a
:class:`~glacier_emulator.fields.Velocity` (m/yr) and may report a stability bound on the time
step. The time stepper only talks to this interface::

    class VelocityProvider(Protocol):
        def velocity(self, geometry) -> Velocity: ...
        def max_time_step(self, geometry, velocity) -> float | None: ...

Optionally a provider may define ``face_velocity(geometry, velocity) -> (u_faces, v_faces)``, the
depth-averaged velocity normal to the cell faces in the stepper's layout (see
:func:`faces_from_nodes`); otherwise the stepper averages the two neighbouring nodes.
"""
from __future__ import annotations

from typing import Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from ..constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL, Physics, VerticalDiscretisation
from ..fields import Geometry, Velocity

PROVIDERS = ("emulator", "solver", "sia")
"""Names accepted by :func:`make_provider`."""

__all__ = [
    "VelocityProvider",
    "SIAProvider",
    "SolverProvider",
    "EmulatorProvider",
    "PrescribedVelocity",
    "make_provider",
    "faces_from_nodes",
    "PROVIDERS",
]


@runtime_checkable
class VelocityProvider(Protocol):
    """What the time stepper needs from an ice-flow model."""

    def velocity(self, geometry: Geometry) -> Velocity:
        """Depth-averaged (and possibly 3-D) velocity of ``geometry`` in m/yr."""

    def max_time_step(self, geometry: Geometry, velocity: Velocity) -> Optional[float]:
        """A stability bound on the time step (yr), or None when the provider has none."""


def faces_from_nodes(ubar: np.ndarray, vbar: np.ndarray, *, periodic: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Face-normal velocities as the average of the two neighbouring nodes (m/yr).

    Layout: ``u_faces`` is ``(ny, nx+1)``, column ``k`` the face between cells ``k-1`` and ``k``;
    column 0 is the west edge of the domain and column ``nx`` the east edge, where the velocity of
    the edge node is used (finite domain) or the wrap-around average (periodic, columns 0 and
    ``nx`` then hold the same face). ``v_faces`` is ``(ny+1, nx)`` likewise along y.
    """
    ubar = np.asarray(ubar, float)
    vbar = np.asarray(vbar, float)
    ny, nx = ubar.shape
    u_faces = np.empty((ny, nx + 1))
    v_faces = np.empty((ny + 1, nx))
    u_faces[:, 1:-1] = 0.5 * (ubar[:, :-1] + ubar[:, 1:])
    v_faces[1:-1, :] = 0.5 * (vbar[:-1, :] + vbar[1:, :])
    if periodic:
        u_faces[:, 0] = u_faces[:, -1] = 0.5 * (ubar[:, -1] + ubar[:, 0])
        v_faces[0, :] = v_faces[-1, :] = 0.5 * (vbar[-1, :] + vbar[0, :])
    else:
        u_faces[:, 0], u_faces[:, -1] = ubar[:, 0], ubar[:, -1]
        v_faces[0, :], v_faces[-1, :] = vbar[0, :], vbar[-1, :]
    return u_faces, v_faces


class SIAProvider:
    """The shallow-ice approximation (:mod:`glacier_emulator.physics.sia`).

    Mass moves with the face-centred (Mahaffy-type) SIA velocity; :meth:`velocity` returns the
    nodal one. The stability bound is the explicit diffusive limit
    ``safety * min(dx, dy)**2 / (4 max D)``.

    Args:
        physics: constants (A, n, rho g, sliding law).
        safety: factor applied to the diffusive bound (0 < safety).
        zeta: optional levels on which to return the 3-D profile.
    """

    name = "sia"

    def __init__(self, physics: Physics = DEFAULT_PHYSICS, *, safety: float = 0.8,
                 zeta: Optional[np.ndarray] = None):
        if not safety > 0:
            raise ValueError(f"safety must be > 0. Received: safety={safety!r}")
        self.physics = physics
        self.safety = float(safety)
        self.zeta = zeta

    def velocity(self, geometry: Geometry) -> Velocity:
        from ..physics.sia import sia_velocity

        return sia_velocity(geometry, physics=self.physics, zeta=self.zeta)

    def face_velocity(self, geometry: Geometry, velocity: Optional[Velocity] = None):
        from ..physics.sia import sia_face_velocities

        return sia_face_velocities(geometry, physics=self.physics, nodal=velocity)

    def max_time_step(self, geometry: Geometry, velocity: Velocity) -> Optional[float]:
        from ..physics.sia import sia_stable_time_step

        return sia_stable_time_step(geometry, physics=self.physics, safety=self.safety)


class SolverProvider:
    """The reference Blatter-Pattyn solver, warm-started from its previous result.

    Args:
        physics: constants.
        vertical: the terrain-following levels.
        config: a :class:`~glacier_emulator.numerics.solver.SolverConfig` (default settings if
            None).
        reuse_memory: start each solve with the L-BFGS curvature pairs of the previous one
            (besides its velocity).
    """

    name = "solver"

    def __init__(self, physics: Physics = DEFAULT_PHYSICS,
                 vertical: VerticalDiscretisation = DEFAULT_VERTICAL, config=None,
                 reuse_memory: bool = True):
        self.physics = physics
        self.reuse_memory = reuse_memory
        self.vertical = vertical
        self.config = config
        self.last_result = None

    def reset(self) -> None:
        """Forget the previous result: the next solve starts from rest (the multilevel start).
        :class:`~glacier_emulator.dynamics.check.VelocityCheck` does this before each check."""
        self.last_result = None

    def velocity(self, geometry: Geometry) -> Velocity:
        from ..numerics.solver import SolverConfig, solve

        config = self.config if self.config is not None else SolverConfig()
        initial = None if self.last_result is None else self.last_result.velocity
        memory = None if self.last_result is None else self.last_result.memory
        if initial is not None and initial.ubar.shape != geometry.shape:
            initial = memory = None
        self.last_result = solve(
            geometry, physics=self.physics, vertical=self.vertical, config=config, initial=initial,
            memory=memory if self.reuse_memory else None,
        )
        return self.last_result.velocity

    def max_time_step(self, geometry: Geometry, velocity: Velocity) -> Optional[float]:
        return None


class EmulatorProvider:
    """A trained emulator: any object with ``predict_geometry(geometry) -> Velocity`` (or
    ``velocity(geometry) -> Velocity``), e.g. :class:`glacier_emulator.emulator.Emulator`.

    An :class:`~glacier_emulator.emulator.Emulator` with ``refine`` > 0
    (:meth:`~glacier_emulator.emulator.Emulator.with_refine`, ``run --refine N``) is refined
    here. Each refinement starts from the network's prediction as
    :meth:`~glacier_emulator.emulator.Emulator.refine_initial` makes it for a forward run: with
    the emulator's default ``refine_from="auto"``, the shallow-ice vertical profile of its depth
    average, also for a 3-D model (closer than the levels in three of four runs of the bundled
    example: :data:`~glacier_emulator.constants.REFINE_LEVELS_MAX`). It may carry two things from
    one call to the next:

    * ``reuse_memory`` (default on): the L-BFGS curvature pairs of the previous refinement (as
      :class:`SolverProvider` does);
    * ``carry_correction`` (default off; ``run --carry-correction``): the previous refinement's
      correction to its network prediction (refined minus network, on the levels, ice nodes
      only). Each refinement then starts from this step's network prediction plus that
      correction instead of the prediction alone; nodes that were ice-free at the previous call
      get no correction.

    Measured on the bundled example (thickness RMS difference from the solver-driven run, `--refine
    10`; notes of the twenty-second session): 0.29 m with neither, 0.07 m with the memory, 0.03 m
    with both in its 50-year retreat (``scripts/results/forward_refine_carry.md``), but 0.06 m
    with the memory and 0.13 m with both in 20 years of advance under a 200 m lower ELA (with 5
    iterations 0.18 m and 0.29 m): the correction helps where the ice retreats and hurts where it
    advances into nodes that have none, so it is not the default.

    Args:
        emulator: the model object.
        reuse_memory: pass each refinement the solver memory of the previous one.
        carry_correction: start each refinement from the network plus the previous correction.
    """

    name = "emulator"

    def __init__(self, emulator, reuse_memory: bool = True, carry_correction: bool = False):
        method = getattr(emulator, "predict_geometry", None) or getattr(emulator, "velocity", None)
        if not callable(method):
            raise TypeError(
                "EmulatorProvider needs an object with a predict_geometry(geometry) -> Velocity "
                f"method. Received: {type(emulator).__name__}"
            )
        self.emulator = emulator
        self._predict = method
        self.reuse_memory = reuse_memory
        self.carry_correction = carry_correction
        self.last_result = None
        self.correction = None

    def reset(self) -> None:
        """Forget the solver memory and the correction of the previous refinement."""
        self.last_result = None
        self.correction = None

    def velocity(self, geometry: Geometry) -> Velocity:
        refine = int(getattr(self.emulator, "refine", 0) or 0)
        if not refine or not callable(getattr(self.emulator, "refine_solve", None)):
            return self._predict(geometry)
        initial = getattr(self.emulator, "refine_initial", None)
        if callable(initial):  # the network on the levels (Emulator.refine_initial)
            network = initial(geometry, forward=True)
        else:
            network = self.emulator.predict_geometry(geometry, refine=0)
        ice = geometry.thickness > 0
        same_grid = self.last_result is not None and self.last_result.velocity.ubar.shape == geometry.shape
        memory = self.last_result.memory if (self.reuse_memory and same_grid) else None
        start = network
        if self.carry_correction and same_grid and self.correction is not None and network.u is not None:
            du, dv = self.correction
            start = Velocity.from_levels(np.where(ice, network.u + du, network.u),
                                         np.where(ice, network.v + dv, network.v), network.zeta)
        self.last_result = self.emulator.refine_solve(geometry, start, refine, memory=memory)
        refined = self.last_result.velocity
        if self.carry_correction and network.u is not None and refined.u is not None:
            self.correction = (np.where(ice, refined.u - network.u, 0.0),
                               np.where(ice, refined.v - network.v, 0.0))
        return refined

    def max_time_step(self, geometry: Geometry, velocity: Velocity) -> Optional[float]:
        return None

    def describe(self) -> dict:
        """What a run's output records of the emulator (an :class:`Emulator`'s name, version,
        symmetry averaging, coarsening and solver refinement with how each refinement starts;
        nothing for other objects)."""
        meta = getattr(self.emulator, "metadata", None)
        if meta is None:
            return {}
        model = getattr(self.emulator, "model", None)
        coarsen = getattr(self.emulator, "coarsen", None)
        refine = int(getattr(self.emulator, "refine", 0))
        start = getattr(self.emulator, "refine_start_description", None)
        return {
            "emulator": meta.name,
            "emulator_version": meta.version,
            "emulator_symmetrise": str(getattr(model, "symmetrise", "none")),
            "emulator_coarsen": "none" if coarsen is None else str(coarsen),
            "emulator_refine_iterations": refine,
            # how each refinement of a run starts (see the class docstring)
            "emulator_refine_memory": int(bool(self.reuse_memory)),
            "emulator_refine_carry_correction": int(bool(self.carry_correction)),
            # what each refinement starts from (Emulator.refine_source)
            **({"emulator_refine_start": start(forward=True)} if refine and callable(start) else {}),
        }


class PrescribedVelocity:
    """A fixed depth-averaged velocity (m/yr), uniform or a ``(ny, nx)`` field; for tests.

    Args:
        ubar, vbar: x and y components, scalars or fields.
    """

    name = "prescribed"

    def __init__(self, ubar=0.0, vbar=0.0):
        self.ubar = np.asarray(ubar, float)
        self.vbar = np.asarray(vbar, float)
        for label, value in (("ubar", self.ubar), ("vbar", self.vbar)):
            if value.ndim not in (0, 2):
                raise ValueError(
                    f"{label} must be a scalar or a (ny, nx) field. Received shape {value.shape}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{label} contains NaN or infinite values")

    def velocity(self, geometry: Geometry) -> Velocity:
        shape = geometry.shape
        fields = []
        for label, value in (("ubar", self.ubar), ("vbar", self.vbar)):
            if value.ndim == 2 and value.shape != shape:
                raise ValueError(f"prescribed {label} has shape {value.shape}; expected {shape} (the grid)")
            fields.append(np.broadcast_to(value, shape).astype(float))
        return Velocity(ubar=fields[0], vbar=fields[1])

    def max_time_step(self, geometry: Geometry, velocity: Velocity) -> Optional[float]:
        return None


def make_provider(
    name: str,
    physics: Physics = DEFAULT_PHYSICS,
    *,
    vertical: VerticalDiscretisation = DEFAULT_VERTICAL,
    solver_config=None,
    emulator=None,
) -> VelocityProvider:
    """Build a velocity provider by name: ``'emulator'``, ``'solver'`` or ``'sia'``.

    Args:
        name: the provider.
        physics: constants for the solver and the SIA.
        vertical: levels for the solver.
        solver_config: settings of the solver.
        emulator: for ``'emulator'``: the model object, or None to load the pretrained one
            (:meth:`glacier_emulator.emulator.Emulator.pretrained`).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    key = str(name).strip().lower()
    if key == "sia":
        return SIAProvider(physics)
    if key == "solver":
        return SolverProvider(physics, vertical, solver_config)
    if key == "emulator":
        if emulator is None:
            from ..emulator import Emulator

            emulator = Emulator.pretrained()
        return EmulatorProvider(emulator)
    raise ValueError(f"Unknown velocity provider {name!r}; valid: {', '.join(PROVIDERS)}")
