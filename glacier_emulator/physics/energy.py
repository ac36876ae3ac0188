r"""The Blatter-Pattyn (first-order Stokes) energy: the single source of the ice-flow physics.

The velocity :math:`\mathbf u = (u, v)` of the first-order approximation minimises

.. math::

    E(\mathbf u) = \underbrace{\int_\Omega \frac{2n}{n+1} A^{-1/n}\,
        \dot\varepsilon_e^{(n+1)/n} \,\mathrm dV}_{\text{viscous}}
      + \underbrace{\int_{\Gamma_b} \frac{c}{m+1} |\mathbf u_b|^{m+1} \,\mathrm dA}_{\text{sliding}}
      + \underbrace{\int_\Omega \rho g\, \nabla s \cdot \mathbf u \,\mathrm dV}_{\text{gravity}}

with the first-order effective strain rate

.. math::

    \dot\varepsilon_e^2 = u_x^2 + v_y^2 + u_x v_y + \tfrac14 (u_y + v_x)^2
        + \tfrac14 u_z^2 + \tfrac14 v_z^2 + \dot\varepsilon_0^2 .

Its Euler-Lagrange equations are the Blatter-Pattyn equations with Glen's law
:math:`\tau_{ij} = A^{-1/n}\dot\varepsilon_e^{(1-n)/n}\dot\varepsilon_{ij}`, a stress-free surface
and the Weertman law :math:`\boldsymbol\tau_b = c |\mathbf u_b|^{m-1} \mathbf u_b` at the bed.

Discretisation (see :mod:`glacier_emulator.numerics.grid`): the velocity lives on the grid nodes
and on ``Nz`` terrain-following levels :math:`z = b + \zeta H`; it is trilinear in each element
(bilinear in x, y; linear in :math:`\zeta`). Horizontal integrals use 2 x 2 Gauss points, vertical
ones the midpoint of each layer. Derivatives at constant z follow from the chain rule,
:math:`u_x|_z = u_x|_\zeta - (z_x|_\zeta / H) u_\zeta` with :math:`z_x|_\zeta = s_x - (1-\zeta)H_x`.

Units: lengths in m, velocity in m/yr, A in MPa^-n yr^-1, c in MPa (m/yr)^-m, rho g in MPa/m;
every energy is in MPa m^3 yr^-1 (a power). All functions accept a leading batch shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import tensorflow as tf

from ..constants import DEFAULT_PHYSICS, DEFAULT_VERTICAL, Physics, VerticalDiscretisation
from ..numerics.grid import element_gradient, element_values, element_weight


def glen_dissipation(strain_rate_squared, *, rate_factor, glen_exponent: float):
    r"""Viscous dissipation density of Glen's law.

    .. math:: \Phi = \frac{2n}{n+1} A^{-1/n} \dot\varepsilon_e^{(n+1)/n}

    Args:
        strain_rate_squared: :math:`\dot\varepsilon_e^2` in yr^-2 (regularisation included).
        rate_factor: A in MPa^-n yr^-1 (scalar or broadcastable field).
        glen_exponent: n.

    Returns:
        Energy density in MPa yr^-1.
    """
    n = glen_exponent
    dtype = strain_rate_squared.dtype
    rate_factor = tf.cast(rate_factor, dtype)
    return (2.0 * n / (n + 1.0)) * rate_factor ** (-1.0 / n) * strain_rate_squared ** (
        (n + 1.0) / (2.0 * n)
    )


@dataclass
class ColumnGeometry:
    """Geometry sampled at the quadrature points (built by :func:`sample_geometry`).

    Arrays are shaped ``(..., 4, ey, ex)``; ``ice`` is 1 where the interpolated thickness is > 0.
    """

    thickness: tf.Tensor
    thickness_x: tf.Tensor
    thickness_y: tf.Tensor
    surface_x: tf.Tensor
    surface_y: tf.Tensor
    ice: tf.Tensor


def sample_geometry(
    *,
    thickness,
    dx: float,
    dy: float,
    surface=None,
    surface_slope=None,
    periodic: bool = False,
    dtype=tf.float32,
) -> ColumnGeometry:
    """Thickness and surface slope at the Gauss points.

    Args:
        thickness: H in m, ``(..., ny, nx)``.
        dx, dy: grid spacing in m.
        surface: s in m, ``(..., ny, nx)``; its gradient is taken element-wise.
        surface_slope: explicit ``(s_x, s_y)`` at the nodes (dimensionless), used instead of
            ``surface`` where the surface itself is not periodic (ISMIP-HOM: s = -x tan(alpha)).
        periodic: wrap the grid around.
    """
    thickness = tf.cast(thickness, dtype)
    h = element_values(thickness, periodic=periodic)
    hx, hy = element_gradient(thickness, dx=dx, dy=dy, periodic=periodic)
    if surface_slope is not None:
        sx = element_values(tf.cast(surface_slope[0], dtype), periodic=periodic)
        sy = element_values(tf.cast(surface_slope[1], dtype), periodic=periodic)
    elif surface is not None:
        sx, sy = element_gradient(tf.cast(surface, dtype), dx=dx, dy=dy, periodic=periodic)
    else:
        raise ValueError("Give either the surface elevation or the surface slope.")
    ice = tf.cast(h > 0, dtype)
    return ColumnGeometry(h, hx, hy, sx, sy, ice)


def _layers(field):
    """(..., Nz, ny, nx) -> lower and upper level of each layer, (..., Nz-1, ny, nx) each."""
    return field[..., :-1, :, :], field[..., 1:, :, :]


def strain_rate_squared(
    u,
    v,
    geometry: ColumnGeometry,
    *,
    zeta: np.ndarray,
    dx: float,
    dy: float,
    periodic: bool,
    regularisation: float,
):
    r"""First-order effective strain rate squared at the quadrature points of every layer.

    .. math::
        \dot\varepsilon_e^2 = u_x^2 + v_y^2 + u_x v_y + \tfrac14(u_y+v_x)^2
            + \tfrac14(u_z^2 + v_z^2) + \dot\varepsilon_0^2

    Args:
        u, v: velocity on the levels, m/yr, ``(..., Nz, ny, nx)``.
        geometry: from :func:`sample_geometry`.
        zeta: the Nz level positions in [0, 1].
        regularisation: :math:`\dot\varepsilon_0` in yr^-1.

    Returns:
        ``(..., Nz-1, 4, ey, ex)`` in yr^-2.
    """
    dtype = u.dtype
    zeta = np.asarray(zeta, dtype=float)
    dzeta = tf.constant(np.diff(zeta), dtype)[:, None, None, None]
    zmid = tf.constant(0.5 * (zeta[1:] + zeta[:-1]), dtype)[:, None, None, None]
    g = geometry
    h = tf.expand_dims(g.thickness, -4)
    h_safe = tf.maximum(h, tf.cast(1e-3, dtype))
    zx = tf.expand_dims(g.surface_x, -4) - (1.0 - zmid) * tf.expand_dims(g.thickness_x, -4)
    zy = tf.expand_dims(g.surface_y, -4) - (1.0 - zmid) * tf.expand_dims(g.thickness_y, -4)

    def derivatives(w):
        lower, upper = _layers(w)
        lx, ly = element_gradient(lower, dx=dx, dy=dy, periodic=periodic)
        ux_, uy_ = element_gradient(upper, dx=dx, dy=dy, periodic=periodic)
        w_xi = 0.5 * (lx + ux_)  # d/dx at constant zeta, layer midpoint
        w_eta = 0.5 * (ly + uy_)
        w_zeta = element_values(upper - lower, periodic=periodic) / dzeta
        w_z = w_zeta / h_safe
        return w_xi - zx * w_z, w_eta - zy * w_z, w_z

    ux, uy, uz = derivatives(u)
    vx, vy, vz = derivatives(v)
    exy = 0.5 * (uy + vx)
    return (
        ux * ux
        + vy * vy
        + ux * vy
        + exy * exy
        + 0.25 * (uz * uz + vz * vz)
        + tf.cast(regularisation, dtype) ** 2
    )


def viscous_energy(
    u, v, geometry: ColumnGeometry, *, zeta, dx, dy, periodic, physics: Physics, rate_factor=None
):
    r"""Viscous term :math:`\int_\Omega \frac{2n}{n+1} A^{-1/n} \dot\varepsilon_e^{(n+1)/n} dV`.

    ``rate_factor`` (MPa^-n yr^-1) may be a scalar or a nodal field ``(..., ny, nx)``; by default
    ``physics.rate_factor``. The constant contributed by the strain-rate regularisation is removed,
    so ice at rest has zero energy. Returns MPa m^3 yr^-1, one value per batch element.
    """
    dtype = u.dtype
    sr2 = strain_rate_squared(
        u, v, geometry, zeta=zeta, dx=dx, dy=dy, periodic=periodic,
        regularisation=physics.strain_rate_regularisation,
    )
    a = tf.cast(physics.rate_factor if rate_factor is None else rate_factor, dtype)
    if len(a.shape) >= 2:  # a nodal field
        a = tf.expand_dims(element_values(a, periodic=periodic), -4)
    phi = glen_dissipation(sr2, rate_factor=a, glen_exponent=physics.glen_exponent)
    # remove the constant that the regularisation adds, so that rest has zero energy
    phi0 = glen_dissipation(
        tf.cast(physics.strain_rate_regularisation, dtype) ** 2, rate_factor=a,
        glen_exponent=physics.glen_exponent,
    )
    phi = phi - phi0
    dzeta = tf.constant(np.diff(np.asarray(zeta, float)), dtype)[:, None, None, None]
    volume = tf.expand_dims(geometry.thickness, -4) * dzeta * element_weight(dx, dy)
    return tf.reduce_sum(phi * volume, axis=[-4, -3, -2, -1])


def gravity_energy(u, v, geometry: ColumnGeometry, *, zeta, periodic, dx, dy, physics: Physics):
    r"""Gravitational term :math:`\int_\Omega \rho g\, \nabla s \cdot \mathbf u\, dV`.

    Returns MPa m^3 yr^-1 per batch element (negative for down-slope flow).
    """
    dtype = u.dtype
    dzeta = np.diff(np.asarray(zeta, float))
    # depth integral of the piecewise-linear profile: trapezoid weights on the levels
    weights = np.zeros(len(zeta))
    weights[:-1] += 0.5 * dzeta
    weights[1:] += 0.5 * dzeta
    w = tf.constant(weights, dtype)[:, None, None]
    ubar = tf.reduce_sum(u * w, axis=-3)
    vbar = tf.reduce_sum(v * w, axis=-3)
    uq = element_values(ubar, periodic=periodic)
    vq = element_values(vbar, periodic=periodic)
    g = geometry
    density = tf.cast(physics.rho_g, dtype) * g.thickness * (g.surface_x * uq + g.surface_y * vq)
    return tf.reduce_sum(density, axis=[-3, -2, -1]) * element_weight(dx, dy)


def sliding_energy(
    u_base, v_base, geometry: ColumnGeometry, *, dx, dy, periodic, physics: Physics,
    sliding_coefficient=None,
):
    r"""Basal friction term :math:`\int_{\Gamma_b} \frac{c}{m+1}|\mathbf u_b|^{m+1} dA`.

    With :math:`|\mathbf u_b|^2` regularised by ``physics.sliding_regularisation`` squared (and the
    constant of the regularisation removed, so zero velocity has zero energy). ``u_base``,
    ``v_base`` are nodal, m/yr; ``sliding_coefficient`` (MPa (m/yr)^-m) a scalar or nodal field.
    Integrated over ice-covered quadrature points only.
    """
    dtype = u_base.dtype
    m = physics.sliding_exponent
    c = physics.sliding_coefficient if sliding_coefficient is None else sliding_coefficient
    c = tf.cast(c, dtype)
    if len(c.shape) >= 2:
        c = element_values(c, periodic=periodic)
    ub = element_values(u_base, periodic=periodic)
    vb = element_values(v_base, periodic=periodic)
    delta2 = tf.cast(physics.sliding_regularisation, dtype) ** 2
    p = (m + 1.0) / 2.0
    density = c / (m + 1.0) * ((ub * ub + vb * vb + delta2) ** p - delta2**p)
    return tf.reduce_sum(density * geometry.ice, axis=[-3, -2, -1]) * element_weight(dx, dy)


def blatter_pattyn_energy(
    u,
    v,
    *,
    thickness,
    dx: float,
    dy: Optional[float] = None,
    surface=None,
    surface_slope=None,
    sliding_coefficient=None,
    rate_factor=None,
    physics: Physics = DEFAULT_PHYSICS,
    vertical: VerticalDiscretisation = DEFAULT_VERTICAL,
    periodic: bool = False,
    geometry: Optional[ColumnGeometry] = None,
    return_terms: bool = False,
):
    """Total Blatter-Pattyn energy (MPa m^3 yr^-1): viscous + sliding + gravity.

    Args:
        u, v: velocity on the Nz levels, m/yr, ``(..., Nz, ny, nx)`` (level 0 is the bed).
        thickness: m, ``(..., ny, nx)``.
        dx, dy: grid spacing, m (``dy`` defaults to ``dx``).
        surface / surface_slope: see :func:`sample_geometry`.
        sliding_coefficient, rate_factor: nodal fields or scalars overriding ``physics``.
        physics: the constants (A, n, rho, g, sliding law).
        vertical: the levels.
        periodic: periodic boundaries (else a finite domain).
        geometry: precomputed :func:`sample_geometry` (saves work inside an optimisation loop).
        return_terms: also return a dict of the three terms.

    Example:
        >>> import numpy as np
        >>> h = np.full((8, 8), 100.0); s = h.copy()
        >>> u = np.zeros((10, 8, 8))
        >>> abs(float(blatter_pattyn_energy(u, u, thickness=h, surface=s, dx=100.))) < 1e-9  # at rest
        True
    """
    dy = dx if dy is None else dy
    u = tf.convert_to_tensor(u)
    if not u.dtype.is_floating:
        u = tf.cast(u, tf.float32)
    v = tf.cast(v, u.dtype)
    zeta = vertical.zeta
    if geometry is None:
        geometry = sample_geometry(
            thickness=thickness, dx=dx, dy=dy, surface=surface, surface_slope=surface_slope,
            periodic=periodic, dtype=u.dtype,
        )
    common = dict(dx=dx, dy=dy, periodic=periodic, physics=physics)
    terms = {
        "viscous": viscous_energy(u, v, geometry, zeta=zeta, rate_factor=rate_factor, **common),
        "sliding": sliding_energy(
            u[..., 0, :, :], v[..., 0, :, :], geometry, sliding_coefficient=sliding_coefficient,
            **common,
        ),
        "gravity": gravity_energy(u, v, geometry, zeta=zeta, **common),
    }
    total = terms["viscous"] + terms["sliding"] + terms["gravity"]
    return (total, terms) if return_terms else total
