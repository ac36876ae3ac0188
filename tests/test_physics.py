"""The Blatter-Pattyn energy and the reference solver against analytic and published solutions."""
import math

import numpy as np
import pytest
import tensorflow as tf

from glacier_emulator.constants import ISMIP_HOM_PHYSICS, Physics, VerticalDiscretisation
from glacier_emulator.fields import Geometry
from glacier_emulator.numerics.solver import SolverConfig, solve
from glacier_emulator.physics.energy import blatter_pattyn_energy

ALPHA = math.radians(0.5)
H = 800.0


def slab(n=4, *, alpha=ALPHA, thickness=H, dx=1000.0):
    """A periodic parallel-sided slab of uniform thickness on a uniform slope."""
    shape = (n, n)
    return Geometry(
        thickness=np.full(shape, thickness), bed=np.full(shape, -thickness), dx=dx, periodic=True,
        surface_slope=(np.full(shape, -math.tan(alpha)), np.zeros(shape)),
    )


def slab_surface_speed(physics, alpha=ALPHA, thickness=H):
    n = physics.glen_exponent
    return 2 * physics.rate_factor / (n + 1) * (physics.rho_g * math.sin(alpha)) ** n * thickness ** (n + 1)


@pytest.fixture(scope="module")
def slab_solutions():
    physics = Physics(rate_factor=100.0, no_slip=True)
    return {
        nz: solve(slab(), physics=physics, vertical=VerticalDiscretisation(levels=nz, spacing=2.0))
        for nz in (10, 20)
    }, physics


def test_energy_of_zero_velocity_is_zero():
    h = np.full((6, 7), 300.0)
    u = np.zeros((5, 6, 7))
    e, terms = blatter_pattyn_energy(u, u, thickness=h, surface=h + 0.1 * np.arange(7), dx=50.0,
                                     vertical=VerticalDiscretisation(5), return_terms=True)
    assert abs(float(terms["gravity"])) == 0.0 and abs(float(terms["sliding"])) < 1e-9
    assert abs(float(e)) < 1e-9


def test_energy_terms_signs_and_batching():
    h = np.full((2, 6, 6), 300.0)
    s = h - 0.05 * np.arange(6) * 50.0
    u = np.ones((2, 5, 6, 6)) * np.array([1.0, 2.0])[:, None, None, None]
    v = np.zeros_like(u)
    e, t = blatter_pattyn_energy(u, v, thickness=h, surface=s, dx=50.0,
                                 vertical=VerticalDiscretisation(5), return_terms=True)
    assert e.shape == (2,)
    g = t["gravity"].numpy()
    assert np.all(g < 0)  # down-slope flow releases potential energy
    assert g[1] == pytest.approx(2 * g[0], rel=1e-12)  # linear in u
    assert np.all(t["sliding"].numpy() > 0)


def test_energy_float32_and_float64_agree():
    rng = np.random.default_rng(0)
    h = 200 + 50 * rng.random((8, 9))
    s = h + 10 * rng.random((8, 9))
    u = 10 * rng.random((6, 8, 9))
    kw = dict(thickness=h, surface=s, dx=100.0, vertical=VerticalDiscretisation(6))
    e64 = blatter_pattyn_energy(tf.constant(u, tf.float64), tf.constant(u, tf.float64), **kw)
    e32 = blatter_pattyn_energy(tf.constant(u, tf.float32), tf.constant(u, tf.float32), **kw)
    assert e32.dtype == tf.float32
    assert float(e32) == pytest.approx(float(e64), rel=1e-4)


def test_energy_is_differentiable_in_thickness_and_sliding():
    rng = np.random.default_rng(1)
    h = tf.Variable(200 + 50 * rng.random((8, 8)))
    c = tf.Variable(np.full((8, 8), 0.05))
    u = tf.constant(10 * rng.random((5, 8, 8)))
    with tf.GradientTape() as tape:
        e = blatter_pattyn_energy(u, u, thickness=h, surface=h + 1000.0, dx=100.0,
                                  sliding_coefficient=c, vertical=VerticalDiscretisation(5))
    gh, gc = tape.gradient(e, [h, c])
    for g in (gh, gc):
        assert np.all(np.isfinite(g.numpy())) and np.any(g.numpy() != 0)


def test_slab_surface_velocity_matches_analytic(slab_solutions):
    results, physics = slab_solutions
    exact = slab_surface_speed(physics)
    for nz, result in results.items():
        assert result.converged
        us = result.velocity.u_surface
        assert np.allclose(us, us.mean(), rtol=1e-4)  # uniform
        assert np.max(np.abs(result.velocity.v)) < 1e-4 * exact
        assert us.mean() == pytest.approx(exact, rel=0.01), nz


def test_slab_converges_under_vertical_refinement(slab_solutions):
    results, physics = slab_solutions
    exact = slab_surface_speed(physics)
    err = {nz: abs(r.velocity.u_surface.mean() / exact - 1) for nz, r in results.items()}
    # second-order in the layer thickness: halving it should cut the error by well over 2
    assert err[20] < err[10] / 2.5, err


def test_slab_profile_matches_analytic_shape(slab_solutions):
    results, physics = slab_solutions
    r = results[20]
    zeta = r.velocity.zeta
    exact = slab_surface_speed(physics) * (1 - (1 - zeta) ** 4)
    assert np.allclose(r.velocity.u[:, 0, 0], exact, atol=0.01 * exact[-1])


def test_slab_with_linear_sliding_adds_basal_velocity():
    beta2 = 1e-3  # MPa a m^-1 (1000 Pa a m^-1)
    physics = Physics(rate_factor=100.0, sliding_exponent=1.0, sliding_coefficient=beta2)
    result = solve(slab(), physics=physics, vertical=VerticalDiscretisation(levels=10, spacing=2.0))
    basal = physics.rho_g * H * math.sin(ALPHA) / beta2
    assert result.velocity.u_base.mean() == pytest.approx(basal, rel=0.01)
    deformation = result.velocity.u_surface.mean() - result.velocity.u_base.mean()
    assert deformation == pytest.approx(slab_surface_speed(physics), rel=0.01)


def _valley(nx=20, ny=14, dx=100.0, skew=0.0):
    x = np.arange(nx) * dx
    y = np.arange(ny) * dx
    X, Y = np.meshgrid(x, y)
    xc, yc = x.mean(), y.mean()
    shape = 1 - ((X - xc) / (0.45 * nx * dx)) ** 2 - ((Y - yc) / (0.42 * ny * dx)) ** 2
    thickness = np.clip(300 * shape * (1 + skew * (Y - yc) / (ny * dx)), 0, None)
    bed = 1000 - 0.08 * X + 0.02 * Y + 0.0003 * (Y - yc) ** 2
    return Geometry(thickness=thickness, bed=bed, dx=dx)


@pytest.fixture(scope="module")
def valley_solution():
    g = _valley(skew=0.6)
    return g, solve(g, vertical=VerticalDiscretisation(levels=5), config=SolverConfig(tolerance=1e-10))


def test_finite_domain_ice_free_cells_have_no_velocity(valley_solution):
    g, r = valley_solution
    assert r.converged
    off = g.thickness == 0
    assert off.any()
    assert np.all(r.velocity.u[:, off] == 0) and np.all(r.velocity.ubar[off] == 0)
    assert np.max(r.velocity.speed) > 1.0  # the glacier flows


def test_mirroring_x_flips_u(valley_solution):
    g, r = valley_solution
    flipped = Geometry(thickness=g.thickness[:, ::-1], bed=g.bed[:, ::-1], dx=g.dx)
    rf = solve(flipped, vertical=VerticalDiscretisation(levels=5), config=SolverConfig(tolerance=1e-10))
    scale = np.max(np.abs(r.velocity.u))
    assert np.allclose(rf.velocity.u[:, :, ::-1], -r.velocity.u, atol=2e-3 * scale)
    assert np.allclose(rf.velocity.v[:, :, ::-1], r.velocity.v, atol=2e-3 * scale)


def test_zero_thickness_gives_zero_velocity():
    g = Geometry(thickness=np.zeros((6, 6)), bed=np.arange(36.0).reshape(6, 6), dx=100.0)
    r = solve(g)
    assert r.converged and np.all(r.velocity.u == 0) and np.all(r.velocity.ubar == 0)


def test_warm_start_from_solution_converges_immediately(valley_solution):
    g, r = valley_solution
    again = solve(g, vertical=VerticalDiscretisation(levels=5), initial=r.velocity,
                  config=SolverConfig(tolerance=1e-10))
    assert again.iterations <= max(5, r.iterations // 10)
    assert np.allclose(again.velocity.u, r.velocity.u, atol=1e-3 * np.abs(r.velocity.u).max())


def test_hessian_diagonal_is_exact_for_a_separable_quadratic():
    """Hutchinson's estimator with sign probes is exact when the Hessian is diagonal; fixed
    unknowns get 0."""
    from glacier_emulator.numerics.solver import hessian_diagonal

    rng = np.random.default_rng(0)
    a = 10.0 ** rng.uniform(-2, 2, size=(2, 3, 5, 6))
    free = np.ones_like(a)
    free[:, :, 0, 0] = 0.0

    def fun(x):
        return 0.5 * float(np.sum(a.ravel() * x * x)), a.ravel() * x

    d = hessian_diagonal(fun, rng.normal(size=a.size), free, probes=1, smooth=1)
    np.testing.assert_allclose(d[free > 0], a[free > 0], rtol=1e-6)
    assert np.all(d[free == 0] == 0)


def _badly_scaled_quadratic(n=300, seed=1):
    """0.5 x.A.x - b.x with A's diagonal over four orders of magnitude, neighbours coupled."""
    rng = np.random.default_rng(seed)
    a = 10.0 ** rng.uniform(-2, 2, n)
    off = 0.3 * np.sqrt(a[1:] * a[:-1])
    matrix = np.diag(a) + np.diag(off, 1) + np.diag(off, -1)
    b = rng.normal(size=n) * np.sqrt(a)

    def fun(x):
        ax = matrix @ x
        return 0.5 * float(x @ ax) - float(b @ x), ax - b

    return fun, a, np.linalg.solve(matrix, b)


def test_lbfgs_diagonal_preconditioner_on_a_badly_scaled_quadratic():
    """The diagonal as initial inverse Hessian: the same minimum in a fraction of the iterations;
    a diagonal of ones is plain L-BFGS, step for step."""
    from glacier_emulator.numerics.solver import lbfgs

    fun, a, exact = _badly_scaled_quadratic()
    kw = dict(ftol=1e-16, gtol=1e-9, max_iterations=5000, history=10)
    x0 = np.zeros(a.size)
    plain = lbfgs(fun, x0, **kw)
    ones = lbfgs(fun, x0, diagonal=np.ones(a.size), **kw)
    pre = lbfgs(fun, x0, diagonal=1.0 / a, **kw)
    for res in (plain, pre):
        assert res.success
        np.testing.assert_allclose(res.x, exact, rtol=1e-4, atol=1e-5 * np.abs(exact).max())
    assert pre.nit * 5 < plain.nit
    assert ones.nit == plain.nit and np.array_equal(ones.x, plain.x)


def test_lbfgs_takes_the_first_evaluation_from_the_caller():
    """``start``: the value and gradient at x0 the caller has already computed (as ``solve`` does
    for the preconditioner) are used instead of an evaluation: the same iterates, one evaluation
    fewer; the result carries the value and gradient at its point."""
    from glacier_emulator.numerics.solver import lbfgs

    fun, a, exact = _badly_scaled_quadratic()
    kw = dict(ftol=1e-16, gtol=1e-9, max_iterations=40, history=10, diagonal=1.0 / a)
    x0 = np.full(a.size, 0.5)
    own = lbfgs(fun, x0, **kw)
    given = lbfgs(fun, x0, start=fun(x0), **kw)
    assert np.array_equal(own.x, given.x) and own.nit == given.nit and given.nfev == own.nfev - 1
    value, gradient = fun(own.x)
    assert own.value == value and np.array_equal(own.gradient, gradient)


def test_solve_reports_the_energy_and_gradient_of_its_result(valley_solution):
    """A warm, preconditioned solve stopped early reports the energy of the velocity it returns
    (the package's energy of that velocity) and the evaluations it made."""
    from glacier_emulator.fields import Velocity

    g, r = valley_solution
    vertical = VerticalDiscretisation(levels=5)
    guess = Velocity.from_levels(0.7 * r.velocity.u, 1.3 * r.velocity.v, r.velocity.zeta)
    out = solve(g, vertical=vertical, initial=guess, config=SolverConfig(max_iterations=3))
    assert out.report["preconditioned"] and out.iterations == 3 and out.evaluations >= 4
    energy = float(blatter_pattyn_energy(
        tf.constant(out.velocity.u), tf.constant(out.velocity.v), thickness=g.thickness,
        surface=g.surface, dx=g.dx, dy=g.dy, vertical=vertical))
    assert out.energy == pytest.approx(energy, rel=1e-7)  # an iteration changes it by far more
    assert out.gradient_norm > 0 and np.isfinite(out.gradient_norm)


def test_preconditioned_warm_start_reaches_the_same_solution(valley_solution):
    """From a guess 30 % off (a warm start, as ``refine`` and the multilevel start are), the
    preconditioned solve converges to the solution of the plain one, and is reported as such;
    from rest no preconditioner is built."""
    from glacier_emulator.fields import Velocity

    g, r = valley_solution
    vertical = VerticalDiscretisation(levels=5)
    guess = Velocity.from_levels(0.7 * r.velocity.u, 1.3 * r.velocity.v, r.velocity.zeta)
    plain = solve(g, vertical=vertical, initial=guess, config=SolverConfig(tolerance=1e-12, diagonal_probes=0))
    pre = solve(g, vertical=vertical, initial=guess, config=SolverConfig(tolerance=1e-12))
    assert pre.converged and plain.converged
    assert pre.report["preconditioned"] and not plain.report["preconditioned"]
    assert not r.report["preconditioned"]  # from rest on a grid too small for the multilevel start
    ice = g.thickness > 0
    both = [np.stack([s.velocity.u[:, ice], s.velocity.v[:, ice]]) for s in (pre, plain)]
    assert np.linalg.norm(both[0] - both[1]) < 1e-4 * np.linalg.norm(both[1])
    with pytest.raises(ValueError, match="diagonal_probes"):
        SolverConfig(diagonal_probes=-1)


def test_solver_converges_under_grid_refinement():
    """ISMIP-HOM B (L = 20 km): successive refinements differ less and less."""
    from glacier_emulator.verification.ismip_hom import ismip_hom_geometry, surface_profile

    profiles = {}
    for res in (8, 16, 32, 64):
        g = ismip_hom_geometry("B", length_km=20, resolution=res)
        r = solve(g, physics=ISMIP_HOM_PHYSICS, vertical=VerticalDiscretisation(levels=10))
        x_hat, vx, _, _ = surface_profile("B", g, r.velocity)
        profiles[res] = np.interp(np.linspace(0, 1, 65), x_hat, vx)
    d1 = np.abs(profiles[16] - profiles[8]).max()
    d2 = np.abs(profiles[32] - profiles[16]).max()
    d3 = np.abs(profiles[64] - profiles[32]).max()
    assert d3 < d2 < d1
    assert d3 < 0.5 * d2  # at least first order; second order gives ~0.25


def test_scalar_and_uniform_field_parameters_agree():
    rng = np.random.default_rng(2)
    h = 200 + 50 * rng.random((6, 7))
    u = 10 * rng.random((4, 6, 7))
    kw = dict(thickness=h, surface=h + 5 * rng.random((6, 7)), dx=80.0, vertical=VerticalDiscretisation(4))
    scalar = blatter_pattyn_energy(u, u, rate_factor=50.0, sliding_coefficient=0.1, **kw)
    field = blatter_pattyn_energy(u, u, rate_factor=np.full((6, 7), 50.0),
                                  sliding_coefficient=np.full((6, 7), 0.1), **kw)
    assert float(scalar) == pytest.approx(float(field), rel=1e-7)  # bilinear round-off only


def test_one_compilation_serves_every_spacing_of_a_grid_size():
    """The grid spacing enters the compiled energy as an input: a glacier solved at 150 m right
    after the same node arrays at 100 m reuses that compilation and gets the answer of a fresh
    compilation at 150 m (datasets of mixed spacings compile once per grid size)."""
    from glacier_emulator.numerics import solver as solver_module

    x = np.arange(12.0)
    X, Y = np.meshgrid(x - 5.5, np.arange(10.0) - 4.5)
    thickness = 120.0 * np.sqrt(np.clip(1.0 - (X / 5.0) ** 2 - (Y / 4.0) ** 2, 0.0, None))
    vertical = VerticalDiscretisation(levels=4)

    def glacier(dx):
        return Geometry(thickness=thickness, bed=1000.0 - 0.1 * dx * X, dx=dx)

    cache = solver_module._energy_function
    cache.cache_clear()
    at_100 = solve(glacier(100.0), vertical=vertical).velocity
    reused = solve(glacier(150.0), vertical=vertical).velocity
    assert cache.cache_info().misses == 1
    cache.cache_clear()
    fresh = solve(glacier(150.0), vertical=vertical).velocity
    scale = np.abs(fresh.ubar).max()
    np.testing.assert_allclose(reused.ubar, fresh.ubar, atol=1e-6 * scale)
    assert np.abs(at_100.ubar - fresh.ubar).max() > 0.01 * scale  # the spacing matters
