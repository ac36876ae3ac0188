"""Reference Blatter-Pattyn solver: minimise the energy of :mod:`glacier_emulator.physics.energy`.

The unknowns are the nodal velocities on the ``Nz`` levels. Ice-free nodes (thickness 0) carry no
velocity, and with ``physics.no_slip`` the bed level is fixed at zero; both are imposed by a mask,
so the optimiser only sees the free unknowns. The energy and its gradient are evaluated in one
XLA-compiled TensorFlow function (float64 by default) and minimised with L-BFGS (two-loop
recursion, backtracking Armijo line search; :func:`lbfgs`). The problem is scaled before the optimiser sees it: velocities by a
shallow-ice estimate of the speed, energy by the matching power, so that the tolerances mean the
same on every glacier. From a starting guess (a warm start, the multilevel start, ``refine``) the
optimiser is also preconditioned by an estimate of the Hessian's diagonal at that guess
(:func:`hessian_diagonal`): the curvature of the energy differs by orders of magnitude between thin
and thick ice, slow and fast sliding, which a single step scale cannot follow.

Stopping rule (both are reported): the relative energy decrease over an iteration falls below
``tolerance``, or the largest scaled gradient component falls below
``gradient_tolerance``.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from ..constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL, Physics, VerticalDiscretisation
from ..fields import Geometry, Velocity
from ..physics.energy import blatter_pattyn_energy, sample_geometry


@dataclass(frozen=True)
class SolverConfig:
    """Settings of the reference solver.

    Args:
        tolerance: relative energy change per iteration at which to stop.
        gradient_tolerance: largest scaled gradient component at which to stop.
        max_iterations: give up after this many L-BFGS iterations (reported as not converged).
        history: number of L-BFGS correction pairs.
        dtype: ``"float64"`` (default, for tight tolerances) or ``"float32"``.
        multilevel: when starting from rest, first solve on a grid coarsened by 2 (recursively,
            down to ``coarsest`` nodes per side) and start from its interpolated solution. The
            smooth, long-range part of the flow (membrane stresses, sliding) is what L-BFGS is
            slowest at; the coarse grids take it out cheaply.
        coarsest: smallest grid side at which the multilevel recursion stops.
        diagonal_probes: random probes of the energy's Hessian with which to estimate its
            diagonal at the starting guess (:func:`hessian_diagonal`), used as L-BFGS's initial
            inverse Hessian (a diagonal preconditioner); 0 turns it off. Not used from rest (the
            curvature of ice at rest says nothing about the flow). Measured on 64 x 64
            validation glaciers (``training/runs/notes.md``, twenty-first session): 30
            single-precision iterations from the network's prediction left 0.004-0.030 of
            ubar's relative error where 0.010-0.19 were left without it (12 glaciers with
            varying sliding or states of forward runs; about the same on 4 of the default
            physics), and full solves to the default tolerance took 1.8-3.9x less time and
            ended nearer a tightly converged solve.
    """

    tolerance: float = 1e-9
    gradient_tolerance: float = 1e-6
    max_iterations: int = 5000
    history: int = 20
    dtype: str = "float64"
    multilevel: bool = True
    coarsest: int = 24
    diagonal_probes: int = 2

    def __post_init__(self):
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0. Received: tolerance={self.tolerance!r}")
        if not self.gradient_tolerance > 0:
            raise ValueError(f"gradient_tolerance must be > 0. Received: {self.gradient_tolerance!r}")
        if int(self.max_iterations) < 1:
            raise ValueError(f"max_iterations must be >= 1. Received: {self.max_iterations!r}")
        if int(self.diagonal_probes) < 0:
            raise ValueError(f"diagonal_probes must be >= 0. Received: {self.diagonal_probes!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64. Received: {self.dtype!r}")


@dataclass
class SolveResult:
    """What :func:`solve` returns: the velocity and a convergence report."""

    velocity: Velocity
    converged: bool
    iterations: int
    evaluations: int
    energy: float
    gradient_norm: float
    message: str
    wall_time: float
    tolerance: float
    report: dict = field(default_factory=dict)
    memory: Optional[tuple] = field(default=None, repr=False, compare=False)
    """The optimiser's final curvature pairs (pass as ``solve(..., memory=...)`` to a later solve
    of a nearby problem on the same grid, e.g. the next time step)."""

    def summary(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        return (
            f"{state} after {self.iterations} iterations ({self.evaluations} evaluations, "
            f"{self.wall_time:.2f} s): energy {self.energy:.6e} MPa m3 yr-1, scaled gradient "
            f"{self.gradient_norm:.2e} ({self.message})"
        )


def velocity_scale(geometry: Geometry, physics: Physics) -> float:
    """A shallow-ice estimate of the largest speed (m/yr), used to scale the unknowns."""
    sx, sy = geometry.slopes()
    slope = np.hypot(sx, sy)
    h = geometry.thickness
    a = physics.rate_factor if geometry.rate_factor is None else np.max(geometry.rate_factor)
    n = physics.glen_exponent
    u_def = 2 * a / (n + 1) * (physics.rho_g * slope) ** n * h ** (n + 1)
    scale = float(np.max(u_def)) if u_def.size else 0.0
    return max(scale, 1.0)


def _masks(geometry: Geometry, physics: Physics, nz: int) -> np.ndarray:
    ice = (geometry.thickness > 0).astype(np.float64)
    mask = np.broadcast_to(ice, (nz,) + ice.shape).copy()
    if physics.no_slip:
        mask[0] = 0.0
    return mask


@dataclass
class _Minimum:
    x: np.ndarray
    nit: int
    nfev: int
    success: bool
    message: str
    pairs: list = field(default_factory=list)
    value: float = float("nan")
    gradient: Optional[np.ndarray] = None


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product without BLAS: OpenBLAS threads on a busy machine (or a forced
    OPENBLAS_CORETYPE) made ``ndarray.dot`` 100x slower than this memory-bound loop."""
    return float(np.sum(a * b))


def lbfgs(fun, x0: np.ndarray, *, ftol: float, gtol: float, max_iterations: int, history: int,
          callback=None, pairs=None, diagonal: Optional[np.ndarray] = None, start=None) -> _Minimum:
    """Minimise ``fun`` (returning value and gradient) by L-BFGS with a backtracking line search.

    The two-loop recursion costs O(history * n) per iteration (SciPy's L-BFGS-B, built for
    bounds, spent two thirds of a solve in its own bookkeeping). The step satisfies the Armijo
    condition; curvature pairs with s.y <= 0 are skipped. Stops when the relative decrease
    (f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ``ftol`` (SciPy's rule) or max|g| <= ``gtol``.

    ``pairs``: curvature pairs (s, y, 1/s.y) of an earlier minimisation of a nearby function (the
    previous time step's solve) to start from; the result carries the final pairs.

    ``diagonal``: a positive diagonal D (an estimate of the inverse Hessian's diagonal up to a
    factor): the initial inverse Hessian of the recursion is D scaled by s.y / (y.D.y) instead of
    the identity scaled by s.y / y.y, and a step without pairs goes along -D g. The same as
    L-BFGS on the unknowns divided by sqrt(D), with the stopping rule on the original gradient.

    ``start``: ``fun(x0)`` (value, gradient) when the caller has it already (it is not evaluated
    again, nor counted). The result carries the value and gradient at its ``x``.
    """
    x = np.asarray(x0, dtype=np.float64).copy()
    diag = np.ones_like(x) if diagonal is None else np.asarray(diagonal, np.float64).ravel()

    def steepest(g):
        d = -diag * g
        return d / max(1.0, np.sqrt(-_dot(g, d)))

    if start is None:
        f, g = fun(x)
        nfev = 1
    else:
        f, g = float(start[0]), np.asarray(start[1], np.float64)
        nfev = 0
    pairs = list(pairs or [])[-history:]  # (s, y, 1 / s.y)

    def minimum(nit, success, message):
        """The result at the current iterate (x, f, g, pairs as they are when called)."""
        return _Minimum(x, nit, nfev, success, message, pairs, f, g)

    for k in range(1, max_iterations + 1):
        if np.max(np.abs(g)) <= gtol:
            return minimum(k - 1, True, "gradient below tolerance")
        # two-loop recursion: d = -H g
        q = -g
        alphas = []
        for s_, y_, rho in reversed(pairs):
            a = rho * _dot(s_, q)
            alphas.append(a)
            q = q - a * y_
        if pairs:
            s_, y_, rho = pairs[-1]
            q = diag * q * (1.0 / (rho * _dot(y_, diag * y_)))
        else:
            q = steepest(g)
        for (s_, y_, rho), a in zip(pairs, reversed(alphas)):
            b = rho * _dot(y_, q)
            q = q + (a - b) * s_
        d = q
        gd = _dot(g, d)
        if not gd < 0:  # not a descent direction: restart from steepest descent
            pairs.clear()
            d = steepest(g)
            gd = _dot(g, d)
        t = 1.0
        for _ in range(40):
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            nfev += 1
            if np.isfinite(f_new) and f_new <= f + 1e-4 * t * gd:
                break
            # quadratic interpolation of the step, kept within [0.1, 0.5] of the last one
            denom = 2.0 * (f_new - f - gd * t)
            t_q = -gd * t * t / denom if np.isfinite(f_new) and denom > 0 else 0.5 * t
            t = float(np.clip(t_q, 0.1 * t, 0.5 * t))
        else:
            return minimum(k, False, "line search failed")
        s_vec = x_new - x
        y_vec = g_new - g
        sy = _dot(s_vec, y_vec)
        if sy > 1e-12 * np.sqrt(_dot(s_vec, s_vec) * _dot(y_vec, y_vec)):
            pairs.append((s_vec, y_vec, 1.0 / sy))
            if len(pairs) > history:
                pairs.pop(0)
        decrease = (f - f_new) / max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if callback is not None:
            callback(k)
        if decrease <= ftol:
            return minimum(k, True, "relative energy change below tolerance")
    return minimum(max_iterations, False, "iteration limit reached")


def hessian_diagonal(fun, x: np.ndarray, free: np.ndarray, *, probes: int = 2, step: float = 1e-6,
                     smooth: int = 3, seed: int = 0, gradient: Optional[np.ndarray] = None) -> np.ndarray:
    """An estimate of the diagonal of the Hessian of ``fun`` (value and gradient) at ``x``.

    Hutchinson's estimator, diag(H) ~ mean of v * (H v) over random sign vectors v, with H v a
    forward difference of the gradient (``step`` along v), then the magnitudes averaged over
    ``smooth`` x ``smooth`` neighbouring columns of free unknowns (the curvature varies smoothly
    over a glacier; the average takes out most of the estimator's noise from the coupling of
    neighbours). ``x`` and ``free`` are shaped ``(..., ny, nx)`` (``free``: 1 for unknowns, 0
    for fixed ones, where the result is 0). Costs ``probes`` gradient evaluations (one more
    unless ``gradient`` at ``x`` is given).
    """
    from scipy.ndimage import uniform_filter

    shape = free.shape
    x = np.asarray(x, np.float64).reshape(shape)
    g0 = fun(x.ravel())[1] if gradient is None else gradient
    g0 = np.asarray(g0, np.float64).reshape(shape)
    rng = np.random.default_rng(seed)
    total = np.zeros(shape)
    for _ in range(max(int(probes), 1)):
        v = rng.choice([-1.0, 1.0], size=shape) * free
        g1 = np.asarray(fun((x + step * v).ravel())[1], np.float64).reshape(shape)
        total += v * (g1 - g0) / step
    size = (1,) * (len(shape) - 2) + (smooth, smooth)
    weight = uniform_filter(free.astype(np.float64), size=size, mode="nearest")
    mean = uniform_filter(np.abs(total) / max(int(probes), 1) * free, size=size, mode="nearest")
    return np.where(free > 0, mean / np.maximum(weight, 1e-12), 0.0)


def diagonal_preconditioner(diagonal: np.ndarray, free: np.ndarray, *, floor: float = 1e-3) -> np.ndarray:
    """The inverse of a Hessian diagonal, relative to its median over the free unknowns and
    capped at ``1 / floor`` times it (a curvature estimated near zero must not send the first
    steps far); 1 on fixed unknowns."""
    on = free > 0
    if not np.any(on):
        return np.ones(free.shape)
    d = np.abs(diagonal[on])
    ref = float(np.median(d))
    if not np.isfinite(ref) or ref <= 0:
        return np.ones(free.shape)
    out = np.ones(free.shape)
    out[on] = ref / np.maximum(d, floor * ref)
    return out


def coarsen(geometry: Geometry) -> Geometry:
    """Every other node of the grid (spacing doubled); fields are subsampled."""
    sub = (slice(None, None, 2), slice(None, None, 2))

    def pick(a):
        return a if a is None or np.ndim(a) == 0 else np.asarray(a)[sub]

    slope = None
    if geometry.surface_slope is not None:
        slope = tuple(np.asarray(a)[sub] for a in geometry.surface_slope)
    return Geometry(
        thickness=geometry.thickness[sub], bed=geometry.bed[sub], dx=2 * geometry.dx,
        dy=2 * geometry.dy, x=geometry.x[::2], y=geometry.y[::2],
        sliding_coefficient=pick(geometry.sliding_coefficient), rate_factor=pick(geometry.rate_factor),
        periodic=geometry.periodic, surface_slope=slope,
    )


def prolong(field: np.ndarray, shape, *, periodic: bool) -> np.ndarray:
    """Bilinear interpolation of ``(..., ny_c, nx_c)`` from every other node to ``shape``."""
    ny, nx = shape
    out = np.zeros(field.shape[:-2] + (ny, nx))
    out[..., ::2, ::2] = field

    def neighbours_mean(a, axis, n):
        lo = np.take(a, range(0, n - 1, 2), axis=axis)
        if periodic:
            hi = np.roll(np.take(a, range(0, n, 2), axis=axis), -1, axis=axis)
            hi = np.take(hi, range(lo.shape[axis]), axis=axis)
        else:
            hi = np.take(a, range(2, n, 2), axis=axis)
            lo = np.take(lo, range(hi.shape[axis]), axis=axis)
        return 0.5 * (lo + hi)

    # odd columns on even rows, then odd rows everywhere
    even_rows = out[..., ::2, :]
    mid = neighbours_mean(even_rows, -1, nx)
    even_rows[..., 1 : 1 + 2 * mid.shape[-1] : 2] = mid
    if nx % 2 == 0 and not periodic:
        even_rows[..., -1] = even_rows[..., -2]
    out[..., ::2, :] = even_rows
    mid = neighbours_mean(out, -2, ny)
    out[..., 1 : 1 + 2 * mid.shape[-2] : 2, :] = mid
    if ny % 2 == 0 and not periodic:
        out[..., -1, :] = out[..., -2, :]
    return out


def _column_weights(zeta) -> np.ndarray:
    """Scale of each unknown of a column: 1 for the bed, sqrt(layer thickness) for increments."""
    return np.concatenate([[1.0], np.sqrt(np.diff(np.asarray(zeta, float)))])


@functools.lru_cache(maxsize=32)
def _energy_function(*, dtype, periodic, physics, vertical, explicit_slope):
    """The compiled scaled energy and its gradient, for one kind of problem.

    The unknowns ``x`` (shape ``(2, Nz, ny, nx)``: u then v) are the basal velocity and the
    velocity increment across each layer, scaled by sqrt(layer thickness): each layer's shear
    energy then depends on one unknown with a curvature independent of the layer thickness, a
    diagonal preconditioner of the stiff vertical shear. The geometry and the grid spacing enter
    as tensors, so one compilation serves every glacier of a grid size (forward runs, datasets
    whose glaciers have different spacings).
    """
    col_w = tf.constant(_column_weights(vertical.zeta), dtype)[:, None, None]

    @tf.function(jit_compile=True, autograph=False)
    def value_and_grad(x, free, ice, thickness, surface, slope_x, slope_y, sliding, rate,
                       uscale, escale, dx, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            levels = tf.cumsum(x * free * col_w, axis=1) * (uscale * ice)
            cgeom = sample_geometry(
                thickness=thickness, dx=dx, dy=dy, surface=surface,
                surface_slope=(slope_x, slope_y) if explicit_slope else None,
                periodic=periodic, dtype=dtype,
            )
            e = blatter_pattyn_energy(
                levels[0], levels[1], thickness=None, dx=dx, dy=dy, geometry=cgeom,
                sliding_coefficient=sliding, rate_factor=rate, physics=physics,
                vertical=vertical, periodic=periodic,
            ) / escale
        return e, tape.gradient(e, x)

    return value_and_grad


def solve(
    geometry: Geometry,
    *,
    physics: Physics = DEFAULT_PHYSICS,
    vertical: VerticalDiscretisation = DEFAULT_VERTICAL,
    config: SolverConfig = SolverConfig(),
    initial: Optional[Velocity] = None,
    callback=None,
    memory: Optional[tuple] = None,
) -> SolveResult:
    """Solve the Blatter-Pattyn equations for ``geometry`` by energy minimisation.

    Args:
        geometry: the glacier (thickness, bed/surface, spacing, optional sliding and rate fields).
        physics: constants; ``geometry.sliding_coefficient`` / ``rate_factor`` override them.
        vertical: the terrain-following levels.
        config: tolerances and limits.
        initial: warm start (a 3-D velocity on the same levels, or a depth-averaged one that is
            copied to every level).
        callback: called with the iteration number after each iteration.
        memory: ``SolveResult.memory`` of an earlier solve of a nearby problem on the same grid
            and levels (used with ``initial``): L-BFGS starts with its curvature pairs instead
            of a steepest-descent step of unknown scale. Measured: on the 100 x 100 example
            glacier stepped forward 5 time steps with 30 iterations each, relative error 0.033
            against a tight solve with the pairs and 0.079 without; on a 24 x 20 glacier whose
            thickness was scaled by 1.003, no gain (0.003-0.014 either way, 4-32 iterations).

    Returns:
        A :class:`SolveResult` with the 3-D velocity and the convergence report.

    Example:
        >>> from glacier_emulator.verification.ismip_hom import ismip_hom_geometry, ismip_hom_physics
        >>> result = solve(ismip_hom_geometry("B", length_km=10, resolution=8),
        ...                physics=ismip_hom_physics("B"))
        >>> result.converged
        True
    """
    t0 = time.perf_counter()
    coarse_report = None
    if (initial is None and config.multilevel and min(geometry.shape) >= 2 * config.coarsest
            and not (geometry.periodic and (geometry.shape[0] % 2 or geometry.shape[1] % 2))):
        coarse = solve(
            coarsen(geometry), physics=physics, vertical=vertical,
            config=dataclasses.replace(config, tolerance=max(config.tolerance, 1e-7)),
        )
        cu = prolong(coarse.velocity.u, geometry.shape, periodic=geometry.periodic)
        cv = prolong(coarse.velocity.v, geometry.shape, periodic=geometry.periodic)
        initial = Velocity.from_levels(cu, cv, coarse.velocity.zeta)
        coarse_report = dict(iterations=coarse.iterations, wall_time=coarse.wall_time,
                             grid=coarse.velocity.ubar.shape, coarse=coarse.report.get("coarse"))
    dtype = tf.float64 if config.dtype == "float64" else tf.float32
    nz = vertical.levels
    ny, nx = geometry.shape
    zeta = vertical.zeta
    mask_np = _masks(geometry, physics, nz)
    zero = np.zeros((nz, ny, nx))
    if not np.any(mask_np) or not np.any(geometry.thickness > 0):
        vel = Velocity.from_levels(zero, zero, zeta)
        return SolveResult(vel, True, 0, 0, 0.0, 0.0, "no ice", time.perf_counter() - t0,
                           config.tolerance)

    uscale = velocity_scale(geometry, physics)
    sx, sy = geometry.slopes()
    escale = float(
        physics.rho_g * np.sum(geometry.thickness * np.hypot(sx, sy)) * geometry.cell_area * uscale
    )
    escale = max(escale, 1e-30)
    shape = (ny, nx)

    def field(value, default):
        value = default if value is None else value
        return np.broadcast_to(np.asarray(value, np.float64), shape)

    ice = (geometry.thickness > 0).astype(np.float64)
    inputs = [
        mask_np, ice, geometry.thickness, geometry.surface, sx, sy,
        field(geometry.sliding_coefficient, physics.sliding_coefficient),
        field(geometry.rate_factor, physics.rate_factor),
    ]
    inputs = [tf.constant(a, dtype) for a in inputs] + [
        tf.constant(a, dtype) for a in (uscale, escale, geometry.dx, geometry.dy)]
    value_and_grad = _energy_function(
        dtype=dtype, periodic=geometry.periodic, physics=physics, vertical=vertical,
        explicit_slope=geometry.surface_slope is not None,
    )
    # Unknowns: the basal velocity and the velocity increment across each layer, scaled by
    # sqrt(layer thickness) (see _energy_function); fixed ones (ice-free nodes, the bed under
    # no slip) are masked and stay zero.
    col_w = _column_weights(zeta)[:, None, None]

    def fun(x):
        e, g = value_and_grad(tf.constant(x.reshape(2, nz, ny, nx), dtype), *inputs)
        return float(e), g.numpy().astype(np.float64).ravel()

    def to_unknowns(w):
        w = np.asarray(w, float) / uscale
        return np.concatenate([w[:1], np.diff(w, axis=0)], axis=0) / col_w * mask_np

    def to_levels(x):
        x = x.reshape(2, nz, ny, nx) * mask_np
        return tuple(np.cumsum(x[i] * col_w, axis=0) * uscale * ice for i in range(2))

    if initial is not None:
        if initial.u is not None and initial.u.shape == (nz, ny, nx):
            u0, v0 = np.asarray(initial.u), np.asarray(initial.v)
        else:
            u0 = np.broadcast_to(initial.ubar, (nz, ny, nx))
            v0 = np.broadcast_to(initial.vbar, (nz, ny, nx))
        x0 = np.stack([to_unknowns(u0), to_unknowns(v0)]).ravel()
    else:
        x0 = np.zeros(2 * nz * ny * nx)

    # L-BFGS works on the free unknowns only (the fixed ones, ice-free nodes and the bed under
    # no slip, have zero gradient and stay zero): its vector arithmetic, bound by memory
    # bandwidth, shrinks with the share of the grid under ice
    free = np.stack([mask_np, mask_np])
    on = np.flatnonzero(free.ravel() > 0)

    def expand(vector):
        out = np.zeros(x0.size)
        out[on] = vector
        return out

    def fun_free(xf):
        e, g = fun(expand(xf))
        return e, g[on]

    pairs = None
    if memory is not None and initial is not None and memory[0] == x0.shape:
        # the previous solve's curvature pairs (full length), restricted to this solve's free
        # unknowns; where the ice changed, s.y changes with them
        pairs = []
        for s_, y_, _ in memory[1]:
            s_, y_ = s_[on], y_[on]
            sy = _dot(s_, y_)
            if sy > 0:
                pairs.append((s_, y_, 1.0 / sy))
    diagonal = start = None
    if config.diagonal_probes and np.any(x0):
        # estimated anew at every start, also with memory: in the example's forward run with
        # `refine` a diagonal carried over from the previous step was worse (notes, 21st session)
        # a step of 1e-6 of the scaled unknowns (O(1)); single precision needs a longer one
        step = 1e-6 if config.dtype == "float64" else 1e-4
        e0, g0 = fun(x0)  # serves the estimate and the minimisation's first iteration
        start = (e0, g0[on])
        diagonal = diagonal_preconditioner(
            hessian_diagonal(fun, x0, free, probes=config.diagonal_probes, step=step, gradient=g0),
            free).ravel()[on]
    res = lbfgs(fun_free, x0[on], ftol=config.tolerance, gtol=config.gradient_tolerance,
                max_iterations=int(config.max_iterations), history=int(config.history),
                callback=callback, pairs=pairs, diagonal=diagonal, start=start)
    if start is not None:
        res.nfev += 1  # the start, evaluated above
    res.x = expand(res.x)
    res.pairs = [(expand(s_), expand(y_), rho) for s_, y_, rho in res.pairs]
    # the value and gradient at the result, from the minimisation (the fixed unknowns' gradient
    # is zero: the energy sees them through the mask only)
    e, gnorm = res.value, float(np.max(np.abs(res.gradient), initial=0.0))
    u, v = to_levels(res.x)
    vel = Velocity.from_levels(u, v, zeta)
    message = res.message
    converged = bool(res.success)
    nfree = int(mask_np.sum())
    return SolveResult(
        velocity=vel, converged=converged, iterations=int(res.nit), evaluations=int(res.nfev),
        energy=e * escale, gradient_norm=gnorm, message=message,
        wall_time=time.perf_counter() - t0, tolerance=config.tolerance, memory=(x0.shape, res.pairs),
        report=dict(velocity_scale=uscale, energy_scale=escale, unknowns=2 * nfree,
                    coarse=coarse_report, preconditioned=diagonal is not None),
    )
