r"""The Blatter-Pattyn energy and its minimisation in JAX, batched over glaciers (GPU recipe).

A line-by-line port of :mod:`glacier_emulator.physics.energy` (trilinear elements, 2 x 2 Gauss
points, midpoint rule per layer, first-order strain rate, Weertman sliding, gravity) and of the
reference solver's scaled unknowns (:mod:`glacier_emulator.numerics.solver`), for finite
(non-periodic) domains. It exists because the GPU machine has JAX and no TensorFlow: labelling
thousands of glaciers there is the point. Every glacier of a batch shares the grid shape; its
spacing, thickness, surface, sliding coefficient and rate factor are its own.

``tests/test_gpu_recipe.py`` checks it against the TensorFlow energy (same value to 1e-12) and
the GPU solution against the reference solver's labels, when JAX is installed.

Units as in the package: m, yr, MPa.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

GAUSS = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))
GAUSS_POINTS = tuple((gx, gy) for gy in GAUSS for gx in GAUSS)


def element_values(f):
    """Bilinear interpolant at the Gauss points: ``(..., ny, nx) -> (..., 4, ny-1, nx-1)``."""
    a00, a10, a01, a11 = f[..., :-1, :-1], f[..., :-1, 1:], f[..., 1:, :-1], f[..., 1:, 1:]
    return jnp.stack([(1 - gx) * (1 - gy) * a00 + gx * (1 - gy) * a10 + (1 - gx) * gy * a01
                      + gx * gy * a11 for gx, gy in GAUSS_POINTS], axis=-3)


def element_gradient(f, dx, dy):
    """x and y derivatives at the Gauss points; ``dx``, ``dy`` broadcast against the result."""
    a00, a10, a01, a11 = f[..., :-1, :-1], f[..., :-1, 1:], f[..., 1:, :-1], f[..., 1:, 1:]
    ddx = jnp.stack([(1 - gy) * (a10 - a00) + gy * (a11 - a01) for gx, gy in GAUSS_POINTS], axis=-3)
    ddy = jnp.stack([(1 - gx) * (a01 - a00) + gx * (a11 - a10) for gx, gy in GAUSS_POINTS], axis=-3)
    return ddx / dx, ddy / dy


@dataclass(frozen=True)
class Constants:
    """The physics of :class:`glacier_emulator.constants.Physics` and the levels, as floats."""

    zeta: tuple
    glen_exponent: float
    rho_g: float
    sliding_exponent: float
    strain_rate_regularisation: float
    sliding_regularisation: float
    no_slip: bool

    @classmethod
    def from_package(cls, physics, vertical) -> "Constants":
        return cls(tuple(float(z) for z in vertical.zeta), float(physics.glen_exponent),
                   float(physics.rho_g), float(physics.sliding_exponent),
                   float(physics.strain_rate_regularisation), float(physics.sliding_regularisation),
                   bool(physics.no_slip))


def energy(u, v, g, k: Constants):
    """Blatter-Pattyn energy (MPa m^3 yr^-1) of one glacier.

    ``u``, ``v``: ``(Nz, ny, nx)`` m/yr. ``g``: dict of ``thickness``, ``surface``, ``sliding``,
    ``rate`` (nodal ``(ny, nx)``) and scalars ``dx``, ``dy``. Batch with :func:`jax.vmap`.
    """
    dx, dy = g["dx"], g["dy"]
    zeta = np.asarray(k.zeta)
    dzeta_np = np.diff(zeta)
    dzeta = jnp.asarray(dzeta_np)[:, None, None, None]
    zmid = jnp.asarray(0.5 * (zeta[1:] + zeta[:-1]))[:, None, None, None]
    n = k.glen_exponent
    w = dx * dy / 4.0
    h = element_values(g["thickness"])
    hx, hy = element_gradient(g["thickness"], dx, dy)
    sx, sy = element_gradient(g["surface"], dx, dy)
    ice = (h > 0).astype(u.dtype)
    h3 = h[None]
    h_safe = jnp.maximum(h3, 1e-3)
    zx = sx[None] - (1.0 - zmid) * hx[None]
    zy = sy[None] - (1.0 - zmid) * hy[None]

    def derivatives(f):
        lower, upper = f[:-1], f[1:]
        lx, ly = element_gradient(lower, dx, dy)
        ux_, uy_ = element_gradient(upper, dx, dy)
        f_xi = 0.5 * (lx + ux_)
        f_eta = 0.5 * (ly + uy_)
        f_z = element_values(upper - lower) / dzeta / h_safe
        return f_xi - zx * f_z, f_eta - zy * f_z, f_z

    ux, uy, uz = derivatives(u)
    vx, vy, vz = derivatives(v)
    exy = 0.5 * (uy + vx)
    reg2 = k.strain_rate_regularisation ** 2
    sr2 = ux * ux + vy * vy + ux * vy + exy * exy + 0.25 * (uz * uz + vz * vz) + reg2
    a = element_values(g["rate"])[None]

    def glen(s2):
        return (2.0 * n / (n + 1.0)) * a ** (-1.0 / n) * s2 ** ((n + 1.0) / (2.0 * n))

    phi = glen(sr2) - glen(jnp.asarray(reg2, u.dtype))
    viscous = jnp.sum(phi * h3 * dzeta) * w
    # gravity: depth average by the trapezoid rule on the levels
    tw = np.zeros(len(zeta))
    tw[:-1] += 0.5 * dzeta_np
    tw[1:] += 0.5 * dzeta_np
    tw = jnp.asarray(tw)[:, None, None]
    uq = element_values(jnp.sum(u * tw, axis=0))
    vq = element_values(jnp.sum(v * tw, axis=0))
    gravity = jnp.sum(k.rho_g * h * (sx * uq + sy * vq)) * w
    # sliding
    m = k.sliding_exponent
    c = element_values(g["sliding"])
    ub, vb = element_values(u[0]), element_values(v[0])
    d2 = k.sliding_regularisation ** 2
    p = (m + 1.0) / 2.0
    sliding = jnp.sum(c / (m + 1.0) * ((ub * ub + vb * vb + d2) ** p - d2 ** p) * ice) * w
    return viscous + sliding + gravity


def column_weights(zeta) -> np.ndarray:
    """As the reference solver: 1 for the bed, sqrt(layer thickness) for the increments."""
    return np.concatenate([[1.0], np.sqrt(np.diff(np.asarray(zeta, float)))])


def scales(thickness, sx, sy, rate, dx, dy, physics) -> tuple:
    """The reference solver's velocity and energy scales of one glacier (numpy)."""
    slope = np.hypot(sx, sy)
    n = physics.glen_exponent
    a = float(np.max(rate))
    u_def = 2 * a / (n + 1) * (physics.rho_g * slope) ** n * thickness ** (n + 1)
    uscale = max(float(np.max(u_def)) if u_def.size else 0.0, 1.0)
    escale = float(physics.rho_g * np.sum(thickness * slope) * dx * dy * uscale)
    return uscale, max(escale, 1e-30)


def make_problem(k: Constants):
    """``value_and_grad(x, g)`` of the scaled energy of one glacier.

    ``x``: ``(2, Nz, ny, nx)``, the basal velocity and the scaled increments across each layer
    (the reference solver's unknowns). ``g`` adds ``free`` (``(Nz, ny, nx)`` mask), ``ice``,
    ``uscale``, ``escale`` to the fields of :func:`energy`.
    """
    col_w = jnp.asarray(column_weights(k.zeta))[:, None, None]

    def scaled(x, g):
        levels = jnp.cumsum(x * g["free"][None] * col_w[None], axis=1) * (g["uscale"] * g["ice"])
        return energy(levels[0], levels[1], g, k) / g["escale"]

    return jax.value_and_grad(scaled)


def to_levels(x, g, k: Constants):
    """Unknowns -> ``(u, v)`` on the levels (m/yr)."""
    col_w = jnp.asarray(column_weights(k.zeta))[:, None, None]
    levels = jnp.cumsum(x * g["free"][None] * col_w[None], axis=1) * (g["uscale"] * g["ice"])
    return levels[0], levels[1]


def to_unknowns(u, v, g, k: Constants):
    """``(u, v)`` on the levels -> unknowns (the inverse of :func:`to_levels` on free nodes)."""
    col_w = jnp.asarray(column_weights(k.zeta))[:, None, None]

    def one(w):
        w = w / g["uscale"]
        inc = jnp.concatenate([w[:1], jnp.diff(w, axis=0)], axis=0)
        return inc / col_w * g["free"]

    return jnp.stack([one(u), one(v)])


def hessian_diagonal(value_and_grad, x, g, *, probes: int = 2, smooth: int = 3, seed: int = 0):
    """The reference solver's :func:`~glacier_emulator.numerics.solver.hessian_diagonal` for one
    problem: Hutchinson's estimate mean(v * H v) over ``probes`` sign vectors (H v exact, by
    forward-over-reverse differentiation), its magnitude averaged over ``smooth`` x ``smooth``
    neighbouring columns of free unknowns (edge values repeated, as SciPy's ``nearest``)."""
    free = jnp.broadcast_to(g["free"], x.shape).astype(x.dtype)
    grad = lambda z: value_and_grad(z, g)[1]  # noqa: E731
    keys = jax.random.split(jax.random.PRNGKey(seed), probes)

    def one(key):
        v = jax.random.rademacher(key, x.shape, dtype=x.dtype) * free
        return v * jax.jvp(grad, (x,), (v,))[1]

    total = jnp.abs(sum(one(key) for key in keys) / probes) * free
    r = smooth // 2

    def box(a):
        pad = [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)]
        a = jnp.pad(a, pad, mode="edge")
        ny, nx = a.shape[-2] - 2 * r, a.shape[-1] - 2 * r
        return sum(a[..., i:i + ny, j:j + nx] for i in range(smooth) for j in range(smooth))

    return jnp.where(free > 0, box(total) / jnp.maximum(box(free), 1e-12), 0.0)


def diagonal_preconditioner(diagonal, free, *, floor: float = 1e-3):
    """The reference solver's :func:`~glacier_emulator.numerics.solver.diagonal_preconditioner`:
    the inverse diagonal relative to its median over free unknowns, capped at 1 / floor."""
    on = free > 0
    d = jnp.abs(diagonal)
    ref = jnp.nanmedian(jnp.where(on, d, jnp.nan))
    ok = jnp.isfinite(ref) & (ref > 0)
    inv = ref / jnp.maximum(d, floor * ref)
    return jnp.where(on & ok, inv, 1.0)


def lbfgs(value_and_grad, x0, g, *, iterations: int, history: int = 10, ftol: float = 1e-9,
          gtol: float = 1e-6, probes: int = 0):
    """L-BFGS with backtracking Armijo line search, as the reference solver's :func:`lbfgs`.

    Runs at most ``iterations`` iterations and stops early on the same rules (relative energy
    decrease <= ``ftol`` or max|g| <= ``gtol``). Written for one problem; :func:`jax.vmap` it
    over a batch (finished problems then stay frozen while the others go on). ``probes`` > 0:
    preconditioned by the Hessian diagonal estimated at ``x0`` (:func:`hessian_diagonal`), as
    the reference solver does from a starting guess (``SolverConfig.diagonal_probes``).
    Returns ``(x, f, max|grad|, iterations, converged)``.
    """
    n = x0.size
    shape = x0.shape
    fun = lambda z: value_and_grad(z.reshape(shape), g)  # noqa: E731
    f0, g0 = fun(x0.ravel())
    g0 = g0.ravel()
    dt = x0.dtype
    if probes:
        free = jnp.broadcast_to(g["free"], shape)
        diag = diagonal_preconditioner(hessian_diagonal(value_and_grad, x0, g, probes=probes), free).ravel()
    else:
        diag = jnp.ones((n,), dt)

    def steepest(grad):
        d = -diag * grad
        return d / jnp.maximum(1.0, jnp.sqrt(-jnp.dot(grad, d)))

    state = dict(x=x0.ravel(), f=f0, g=g0, S=jnp.zeros((history, n), dt), Y=jnp.zeros((history, n), dt),
                 rho=jnp.zeros((history,), dt), count=jnp.asarray(0), k=jnp.asarray(0),
                 done=jnp.max(jnp.abs(g0)) <= gtol, converged=jnp.max(jnp.abs(g0)) <= gtol)

    def direction(s):
        q = -s["g"]
        idx = (s["count"] - 1 - jnp.arange(history)) % history  # newest first
        valid = jnp.arange(history) < jnp.minimum(s["count"], history)

        def first(i, carry):
            q, alphas = carry
            j = idx[i]
            a = jnp.where(valid[i], s["rho"][j] * jnp.dot(s["S"][j], q), 0.0)
            return q - a * s["Y"][j], alphas.at[i].set(a)

        q, alphas = jax.lax.fori_loop(0, history, first, (q, jnp.zeros((history,), dt)))
        newest = idx[0]
        yy = jnp.dot(s["Y"][newest], diag * s["Y"][newest])
        q = jnp.where(s["count"] > 0, diag * q / jnp.maximum(s["rho"][newest] * yy, 1e-300),
                      steepest(s["g"]))

        def second(i, q):
            r = history - 1 - i  # oldest first
            j = idx[r]
            b = s["rho"][j] * jnp.dot(s["Y"][j], q)
            return jnp.where(valid[r], q + (alphas[r] - b) * s["S"][j], q)

        return jax.lax.fori_loop(0, history, second, q)

    def step(s):
        d = direction(s)
        gd = jnp.dot(s["g"], d)
        bad = ~(gd < 0)
        d = jnp.where(bad, steepest(s["g"]), d)
        gd = jnp.dot(s["g"], d)
        count = jnp.where(bad, 0, s["count"])

        def ls_cond(c):
            t, fn, gn, it, ok = c
            return (~ok) & (it < 40)

        def ls_body(c):
            t, _, _, it, _ = c
            fn, gn = fun(s["x"] + t * d)
            ok = jnp.isfinite(fn) & (fn <= s["f"] + 1e-4 * t * gd)
            denom = 2.0 * (fn - s["f"] - gd * t)
            tq = jnp.where(jnp.isfinite(fn) & (denom > 0), -gd * t * t / denom, 0.5 * t)
            t_next = jnp.where(ok, t, jnp.clip(tq, 0.1 * t, 0.5 * t))
            return t_next, fn, gn.ravel(), it + 1, ok

        t, fn, gn, _, ok = jax.lax.while_loop(
            ls_cond, ls_body, (jnp.asarray(1.0, dt), s["f"], s["g"], jnp.asarray(0), jnp.asarray(False)))
        x_new = s["x"] + t * d
        sv, yv = x_new - s["x"], gn - s["g"]
        sy = jnp.dot(sv, yv)
        keep = ok & (sy > 1e-12 * jnp.sqrt(jnp.dot(sv, sv) * jnp.dot(yv, yv)))
        slot = count % history
        S = jnp.where(keep, s["S"].at[slot].set(sv), s["S"])
        Y = jnp.where(keep, s["Y"].at[slot].set(yv), s["Y"])
        rho = jnp.where(keep, s["rho"].at[slot].set(1.0 / jnp.where(keep, sy, 1.0)), s["rho"])
        count = jnp.where(keep, count + 1, count)
        decrease = (s["f"] - fn) / jnp.maximum(jnp.maximum(jnp.abs(s["f"]), jnp.abs(fn)), 1.0)
        conv = ok & ((decrease <= ftol) | (jnp.max(jnp.abs(gn)) <= gtol))
        new = dict(x=jnp.where(ok, x_new, s["x"]), f=jnp.where(ok, fn, s["f"]),
                   g=jnp.where(ok, gn, s["g"]), S=S, Y=Y, rho=rho, count=count, k=s["k"] + 1,
                   done=conv | ~ok, converged=conv)
        # a finished problem stays as it is (under vmap the loop runs for the slowest one)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(s["done"], a, b), s, new)

    def cond(s):
        return (~s["done"]) & (s["k"] < iterations)

    s = jax.lax.while_loop(cond, step, state)
    return s["x"].reshape(shape), s["f"], jnp.max(jnp.abs(s["g"])), s["k"], s["converged"]


def batch_solver(k: Constants, *, iterations: int, history: int = 10, ftol: float = 1e-9,
                 gtol: float = 1e-6, probes: int = 0):
    """A compiled ``solve(x0, g)`` over a batch of glaciers (leading axis of every array)."""
    vg = make_problem(k)

    def one(x0, g):
        return lbfgs(vg, x0, g, iterations=iterations, history=history, ftol=ftol, gtol=gtol,
                     probes=probes)

    return jax.jit(jax.vmap(one))


def glacier_arrays(geometries, physics, vertical) -> dict:
    """Stack package :class:`~glacier_emulator.fields.Geometry` objects (one grid shape, finite
    domains) into the batched float64 arrays of :func:`make_problem`."""
    out = {n: [] for n in ("thickness", "surface", "sliding", "rate", "dx", "dy", "free", "ice",
                           "uscale", "escale")}
    nz = vertical.levels
    for geo in geometries:
        shape = geo.shape
        sx, sy = geo.slopes()
        sliding = physics.sliding_coefficient if geo.sliding_coefficient is None else geo.sliding_coefficient
        rate = physics.rate_factor if geo.rate_factor is None else geo.rate_factor
        rate = np.broadcast_to(np.asarray(rate, float), shape)
        ice = (geo.thickness > 0).astype(float)
        free = np.broadcast_to(ice, (nz,) + shape).copy()
        if physics.no_slip:
            free[0] = 0.0
        uscale, escale = scales(geo.thickness, sx, sy, rate, geo.dx, geo.dy, physics)
        for name, value in (("thickness", geo.thickness), ("surface", geo.surface),
                            ("sliding", np.broadcast_to(np.asarray(sliding, float), shape)),
                            ("rate", rate), ("dx", geo.dx), ("dy", geo.dy), ("free", free),
                            ("ice", ice), ("uscale", uscale), ("escale", escale)):
            out[name].append(np.asarray(value, np.float64))
    return {n: np.stack(v) for n, v in out.items()}


def solve_geometries(geometries, physics, vertical, *, iterations=(3000, 3000), history: int = 10,
                     ftol: float = 1e-9, gtol: float = 1e-6, coarse_ftol: float = 1e-7,
                     solvers: dict | None = None, probes: int = 2):
    """Solve a batch of glaciers of one grid shape on the default JAX device.

    Two levels like the reference solver's multilevel start: a solve on every other node (spacing
    doubled, relative tolerance ``coarse_ftol``), bilinearly prolonged, then the full grid.
    ``iterations``: the L-BFGS limits of the two levels. ``probes``: the fine level's diagonal
    preconditioner (:func:`hessian_diagonal`; 0 for none). ``solvers`` caches compiled solvers
    between calls. Returns ``(u, v, report)`` with ``u``, ``v`` of shape ``(B, Nz, ny, nx)``.
    """
    from glacier_emulator.numerics.solver import coarsen, prolong

    k = Constants.from_package(physics, vertical)
    solvers = {} if solvers is None else solvers
    nz = vertical.levels
    shape = geometries[0].shape
    report = {}
    if min(shape) >= 48 and iterations[0] > 0:
        coarse = [coarsen(g) for g in geometries]
        gc = glacier_arrays(coarse, physics, vertical)
        key = ("coarse", iterations[0])
        if key not in solvers:
            solvers[key] = batch_solver(k, iterations=iterations[0], history=history, ftol=coarse_ftol, gtol=gtol)
        xc0 = np.zeros((len(coarse), 2, nz) + coarse[0].shape)
        xc, _, _, itc, _ = solvers[key](jnp.asarray(xc0), jax.tree_util.tree_map(jnp.asarray, gc))
        uc, vc = jax.vmap(lambda x, g: to_levels(x, g, k))(xc, jax.tree_util.tree_map(jnp.asarray, gc))
        u0 = prolong(np.asarray(uc), shape, periodic=False)
        v0 = prolong(np.asarray(vc), shape, periodic=False)
        report["coarse_iterations"] = np.asarray(itc)
    g = jax.tree_util.tree_map(jnp.asarray, glacier_arrays(geometries, physics, vertical))
    if "coarse_iterations" in report:
        x0 = jax.vmap(lambda u, v, gg: to_unknowns(u, v, gg, k))(jnp.asarray(u0), jnp.asarray(v0), g)
    else:
        x0 = jnp.zeros((len(geometries), 2, nz) + shape)
    # preconditioned from the coarse start, as the reference solver (not from rest)
    probes = probes if "coarse_iterations" in report else 0
    key = ("fine", iterations[1], probes)
    if key not in solvers:
        solvers[key] = batch_solver(k, iterations=iterations[1], history=history, ftol=ftol, gtol=gtol,
                                    probes=probes)
    x, f, gmax, its, conv = solvers[key](x0, g)
    u, v = jax.vmap(lambda x_, g_: to_levels(x_, g_, k))(x, g)
    report.update(iterations=np.asarray(its), converged=np.asarray(conv), gradient=np.asarray(gmax),
                  energy=np.asarray(f) * np.asarray(g["escale"]))
    return np.asarray(u), np.asarray(v), report
