"""The shallow-ice approximation: analytic slab, sliding, symmetry, diffusivity, Halfar's solution."""
import math

import numpy as np
import pytest

from glacier_emulator.constants import DEFAULT_PHYSICS
from glacier_emulator.fields import Geometry
from glacier_emulator.physics.sia import (
    sia_diffusivity,
    sia_face_velocities,
    sia_stable_time_step,
    sia_velocity,
)
from glacier_emulator.verification.halfar import HalfarDome

NO_SLIP = DEFAULT_PHYSICS.replace(no_slip=True)


def slab(*, angle_deg=0.5, thickness=500.0, shape=(5, 8), dx=200.0):
    """Uniform thickness on a bed inclined in x (surface falls with x)."""
    ny, nx = shape
    x = np.arange(nx) * dx
    bed = -math.tan(math.radians(angle_deg)) * x * np.ones((ny, 1))
    return Geometry(thickness=np.full(shape, thickness), bed=bed, dx=dx)


def test_slab_surface_velocity_matches_analytic_formula():
    a, h, n = math.radians(0.5), 500.0, NO_SLIP.glen_exponent
    vel = sia_velocity(slab(thickness=h), physics=NO_SLIP, zeta=np.linspace(0, 1, 6))
    rho_g, rate = NO_SLIP.rho_g, NO_SLIP.rate_factor
    # the SIA uses the slope tan(a): exact with tan, within O(a^2) of the textbook sin(a)
    exact_tan = 2 * rate / (n + 1) * (rho_g * math.tan(a)) ** n * h ** (n + 1)
    exact_sin = 2 * rate / (n + 1) * (rho_g * math.sin(a)) ** n * h ** (n + 1)
    np.testing.assert_allclose(vel.u_surface, exact_tan, rtol=1e-12)
    np.testing.assert_allclose(vel.u_surface, exact_sin, rtol=1e-3)
    np.testing.assert_allclose(vel.ubar, (n + 1) / (n + 2) * exact_tan, rtol=1e-12)
    np.testing.assert_allclose(vel.u_base, 0.0, atol=0)
    np.testing.assert_allclose(vel.vbar, 0.0, atol=1e-12)
    # the profile: zero at the bed, the surface value at the top, increasing in between
    assert np.all(vel.u[0] == 0) and np.allclose(vel.u[-1], exact_tan, rtol=1e-12)
    assert np.all(np.diff(vel.u[:, 2, 3]) > 0)


def test_slab_weertman_sliding_balances_driving_stress():
    physics = DEFAULT_PHYSICS  # c = 0.0464 MPa (m/yr)^-1/3, m = 1/3
    h, a = 300.0, math.radians(1.0)
    vel = sia_velocity(slab(thickness=h, angle_deg=1.0), physics=physics)
    tau_b = physics.rho_g * h * math.tan(a)
    u_b = (tau_b / physics.sliding_coefficient) ** (1 / physics.sliding_exponent)
    np.testing.assert_allclose(vel.u_base, u_b, rtol=1e-12)
    deformation = vel.u_surface - vel.u_base
    n = physics.glen_exponent
    np.testing.assert_allclose(vel.ubar - vel.u_base, (n + 1) / (n + 2) * deformation, rtol=1e-12)
    # a geometry field overrides the constant; c = 0 means no sliding in the SIA
    no_sliding = sia_velocity(slab(thickness=h, angle_deg=1.0).replace(sliding_coefficient=0.0),
                              physics=physics)
    np.testing.assert_allclose(no_sliding.u_base, 0.0, atol=0)


def test_zero_thickness_gives_zero_velocity():
    g = slab(thickness=0.0)
    for physics in (DEFAULT_PHYSICS, NO_SLIP):
        vel = sia_velocity(g, physics=physics, zeta=np.linspace(0, 1, 4))
        for field in (vel.ubar, vel.vbar, vel.u, vel.v):
            assert np.all(field == 0)
        u_f, v_f = sia_face_velocities(g, physics=physics)
        assert np.all(u_f == 0) and np.all(v_f == 0)
    assert sia_stable_time_step(g) == math.inf


def bumpy_geometry(flip=False):
    ny, nx, dx = 12, 15, 100.0
    X, Y = np.meshgrid(np.arange(nx) * dx, np.arange(ny) * dx)
    thickness = np.clip(150 - 0.002 * ((X - 600) ** 2 + 1.5 * (Y - 500) ** 2), 0, None)
    bed = 1000 + 0.05 * Y + 0.02 * X + 20 * np.sin(X / 300.0)
    if flip:
        thickness, bed = thickness[:, ::-1], bed[:, ::-1]
    return Geometry(thickness=thickness, bed=bed, dx=dx)


def test_mirroring_x_flips_the_sign_of_u():
    a = sia_velocity(bumpy_geometry(), physics=DEFAULT_PHYSICS)
    b = sia_velocity(bumpy_geometry(flip=True), physics=DEFAULT_PHYSICS)
    assert np.abs(a.ubar).max() > 1.0
    np.testing.assert_allclose(b.ubar, -a.ubar[:, ::-1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.vbar, a.vbar[:, ::-1], rtol=1e-12, atol=1e-12)
    fa, _ = sia_face_velocities(bumpy_geometry(), physics=DEFAULT_PHYSICS)
    fb, _ = sia_face_velocities(bumpy_geometry(flip=True), physics=DEFAULT_PHYSICS)
    np.testing.assert_allclose(fb, -fa[:, ::-1], rtol=1e-12, atol=1e-12)


def test_diffusivity_is_flux_over_slope_and_gives_the_stable_step():
    g = bumpy_geometry()
    vel = sia_velocity(g, physics=DEFAULT_PHYSICS)
    d = sia_diffusivity(g, physics=DEFAULT_PHYSICS)
    sx, sy = g.slopes()
    flux = g.thickness * vel.speed
    np.testing.assert_allclose(flux, d * np.hypot(sx, sy), rtol=1e-10, atol=1e-12)
    # uniform slab: the face diffusivity equals the nodal one, dt = safety dx^2 / (4 D)
    s = slab(thickness=400.0, angle_deg=2.0)
    d_slab = sia_diffusivity(s, physics=NO_SLIP)
    dt = sia_stable_time_step(s, physics=NO_SLIP, safety=0.5)
    assert dt == pytest.approx(0.5 * s.dx**2 / (4 * d_slab.max()), rel=1e-12)
    with pytest.raises(ValueError, match="safety"):
        sia_stable_time_step(s, safety=0.0)


def test_face_velocities_layout_and_uniform_slab():
    g = slab(thickness=400.0, shape=(4, 6))
    u_f, v_f = sia_face_velocities(g, physics=NO_SLIP)
    assert u_f.shape == (4, 7) and v_f.shape == (5, 6)
    nodal = sia_velocity(g, physics=NO_SLIP)
    np.testing.assert_allclose(u_f, nodal.ubar[0, 0], rtol=1e-10)  # uniform slab: all equal
    np.testing.assert_allclose(v_f, 0.0, atol=1e-12)


def test_halfar_exact_solution_properties():
    dome = HalfarDome(height=500.0, radius=10_000.0)
    assert dome.alpha == pytest.approx(1 / 9) and dome.beta == pytest.approx(1 / 18)
    assert dome.thickness(0.0, dome.t0) == pytest.approx(500.0)
    assert dome.thickness(10_000.0, dome.t0) == 0.0
    # volume conserved: integrate numerically at two times
    r = np.linspace(0, 15_000, 300_001)
    volumes = [np.trapezoid(2 * np.pi * r * dome.thickness(r, t), r) for t in (dome.t0, 5 * dome.t0)]
    np.testing.assert_allclose(volumes, dome.volume(), rtol=1e-4)
    assert dome.margin(2 * dome.t0) == pytest.approx(10_000.0 * 2 ** (1 / 18))
    with pytest.raises(ValueError, match="height"):
        HalfarDome(height=-1.0)


def test_sia_shaped_levels_keep_the_depth_average_and_take_the_sia_profile():
    """The 3-D guess for a depth-averaged prediction: its trapezoidal depth average is exactly the
    given one, and each column has the SIA's shape (here no slip: 1 - (1 - zeta)^(n+1), scaled);
    where the SIA does not move the column is uniform."""
    from glacier_emulator.constants import DEFAULT_VERTICAL
    from glacier_emulator.physics.sia import sia_shaped_levels, sia_velocity

    physics = DEFAULT_PHYSICS.replace(no_slip=True)
    g = slab(shape=(5, 8))
    flat = np.zeros((5, 8), bool)
    flat[:, :2] = True                                   # no surface slope: the SIA is at rest
    slope_x = np.where(flat, 0.0, g.slopes()[0])
    g = Geometry(thickness=g.thickness, bed=g.bed, dx=g.dx, surface_slope=(slope_x, 0 * slope_x))
    rng = np.random.default_rng(0)
    ubar, vbar = rng.uniform(-50, 50, (5, 8)), rng.uniform(-50, 50, (5, 8))
    zeta = DEFAULT_VERTICAL.zeta
    v = sia_shaped_levels(g, ubar, vbar, zeta=zeta, physics=physics)
    np.testing.assert_allclose(v.ubar, ubar, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v.vbar, vbar, rtol=1e-12, atol=1e-12)
    sia = sia_velocity(g, physics=physics, zeta=zeta)
    moving = ~flat
    ratio = v.u[1:, moving] / sia.u[1:, moving]        # one factor per column (above the bed)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[-1], ratio.shape), rtol=1e-10)
    assert np.all(v.u[0, moving] == 0.0)                 # no slip at the bed
    np.testing.assert_allclose(v.u[:, flat], np.broadcast_to(ubar[flat], v.u[:, flat].shape))
