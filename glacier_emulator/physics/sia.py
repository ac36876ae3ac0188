r"""The shallow-ice approximation (SIA): an analytic velocity for verification and as a baseline.

Where the ice is thin compared with its horizontal extent, the driving stress is balanced locally
by vertical shear and basal drag. With Glen's law (rate factor :math:`A`, exponent :math:`n`) the
horizontal velocity at height :math:`\zeta = (z - b)/H` above the bed is

.. math::

    \mathbf u(\zeta) = \mathbf u_b
        - \frac{2A}{n+1} (\rho g)^n H^{n+1} |\nabla s|^{n-1} \nabla s
          \,\bigl[1 - (1 - \zeta)^{n+1}\bigr],

its depth average

.. math::

    \bar{\mathbf u} = \mathbf u_b - \frac{2A}{n+2} (\rho g)^n H^{n+1} |\nabla s|^{n-1} \nabla s ,

so that the deformational surface velocity is :math:`(n+2)/(n+1)` times the deformational depth
average. The basal velocity follows the Weertman law :math:`\boldsymbol\tau_b = c|\mathbf u_b|^{m-1}
\mathbf u_b` with the basal drag equal to the driving stress,
:math:`|\boldsymbol\tau_b| = \rho g H |\nabla s|`:

.. math:: \mathbf u_b = -\Bigl(\frac{\rho g H |\nabla s|}{c}\Bigr)^{1/m} \frac{\nabla s}{|\nabla s|}

where :math:`c > 0` and ``physics.no_slip`` is off; elsewhere :math:`\mathbf u_b = 0` (the SIA
has no free-slip limit, so :math:`c = 0` means *no sliding* here, unlike the Blatter-Pattyn solver).

The ice flux is diffusive, :math:`\mathbf q = H\bar{\mathbf u} = -D \nabla s`, with

.. math::

    D = \frac{2A}{n+2} (\rho g)^n H^{n+2} |\nabla s|^{n-1}
        + H \Bigl(\frac{\rho g H}{c}\Bigr)^{1/m} |\nabla s|^{1/m - 1},

and an explicit update of the thickness is stable for
:math:`\Delta t \le \min(\Delta x, \Delta y)^2 / (4 \max D)`.

Two discretisations are provided:

* at the nodes (:func:`sia_velocity`), with the surface gradient of ``Geometry.slopes()`` (central
  differences); this is what is compared with the Blatter-Pattyn solver and the emulator;
* on the cell faces (:func:`sia_face_velocities`), Mahaffy-type: the normal surface gradient is
  the difference of the two neighbouring nodes, the tangential one the average of their central
  differences, and :math:`H` the average of the two nodes. The time stepper moves ice with these
  face velocities; they avoid the odd-even decoupling of nodal central differences and make the
  SIA evolution (Halfar's dome) converge.

Units: m, yr, MPa (see :mod:`glacier_emulator.constants`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..constants import DEFAULT_PHYSICS, Physics, trapezoid_weights
from ..fields import Geometry, Velocity

__all__ = [
    "deformation_factor",
    "sia_components",
    "sia_velocity",
    "sia_shaped_levels",
    "sia_diffusivity",
    "sia_stable_time_step",
    "sia_face_velocities",
]


# --------------------------------------------------------------------------------------------
# Pure physics: functions of named fields (numpy arrays or scalars, broadcastable).
# --------------------------------------------------------------------------------------------


def local_flow_constants(physics: Physics = DEFAULT_PHYSICS) -> dict:
    """The constants of the local shallow-ice + Weertman velocity estimate that the U-Net's prior
    (``glacier_emulator.models.layers.LocalFlowPrior``) computes: rho g (MPa/m), Glen's n, the
    Weertman m and the rate factor A used when the model has no rate-factor input."""
    return dict(rho_g=physics.rho_g, glen_exponent=physics.glen_exponent,
                sliding_exponent=physics.sliding_exponent, rate_factor=physics.rate_factor)


def deformation_factor(*, rate_factor, physics: Physics = DEFAULT_PHYSICS):
    r"""The SIA deformation factor :math:`\Gamma = 2A(\rho g)^n / (n+2)` in m^-n yr^-1.

    Args:
        rate_factor: A in MPa^-n yr^-1 (scalar or field).
        physics: supplies n and rho g (MPa/m).
    """
    n = physics.glen_exponent
    return 2.0 * np.asarray(rate_factor, float) * physics.rho_g**n / (n + 2.0)


def _basal_speed_per_slope(*, thickness, slope, sliding_coefficient, physics: Physics):
    r"""Weertman basal speed divided by the slope magnitude, :math:`|\mathbf u_b| / |\nabla s|`.

    .. math:: \frac{|\mathbf u_b|}{|\nabla s|} = \Bigl(\frac{\rho g H}{c}\Bigr)^{1/m}
              |\nabla s|^{1/m - 1}

    Zero where there is no sliding (``c <= 0``, ``no_slip``), no ice or no slope. Units yr^-1 m.
    """
    shape = np.broadcast(np.asarray(thickness), np.asarray(slope)).shape
    if physics.no_slip:
        return np.zeros(shape)
    c = np.broadcast_to(np.asarray(sliding_coefficient, float), shape)
    h = np.broadcast_to(np.asarray(thickness, float), shape)
    s = np.broadcast_to(np.asarray(slope, float), shape)
    inv_m = 1.0 / physics.sliding_exponent
    active = (c > 0) & (h > 0) & (s > 0)
    out = np.zeros(shape)
    out[active] = (physics.rho_g * h[active] / c[active]) ** inv_m * s[active] ** (inv_m - 1.0)
    return out


def sia_components(
    *,
    thickness,
    surface_slope_x,
    surface_slope_y,
    rate_factor,
    sliding_coefficient,
    physics: Physics = DEFAULT_PHYSICS,
):
    r"""Depth-averaged deformation velocity and basal velocity of the SIA (m/yr).

    .. math::

        \bar{\mathbf u}_d = -\Gamma H^{n+1} |\nabla s|^{n-1} \nabla s, \qquad
        \mathbf u_b = -\Bigl(\frac{\rho g H}{c}\Bigr)^{1/m} |\nabla s|^{1/m-1} \nabla s

    Args:
        thickness: H (m), any shape.
        surface_slope_x, surface_slope_y: the surface gradient (dimensionless), same shape.
        rate_factor: A (MPa^-n yr^-1), scalar or broadcastable.
        sliding_coefficient: c (MPa (m/yr)^-m), scalar or broadcastable; ``<= 0`` is no sliding.
        physics: n, rho g, m and ``no_slip``.

    Returns:
        ``(ubar_def, vbar_def, u_base, v_base)``; the total depth average is the sum of the
        deformational part and the basal part, the surface velocity is
        ``(n+2)/(n+1) * ubar_def + u_base``.
    """
    h = np.maximum(np.asarray(thickness, float), 0.0)
    sx = np.asarray(surface_slope_x, float)
    sy = np.asarray(surface_slope_y, float)
    n = physics.glen_exponent
    slope = np.hypot(sx, sy)
    gamma = deformation_factor(rate_factor=rate_factor, physics=physics)
    coeff = gamma * h ** (n + 1.0) * slope ** (n - 1.0)
    basal = _basal_speed_per_slope(
        thickness=h, slope=slope, sliding_coefficient=sliding_coefficient, physics=physics
    )
    return -coeff * sx, -coeff * sy, -basal * sx, -basal * sy


def _parameters(geometry: Geometry, physics: Physics):
    rate = physics.rate_factor if geometry.rate_factor is None else geometry.rate_factor
    sliding = (
        physics.sliding_coefficient
        if geometry.sliding_coefficient is None
        else geometry.sliding_coefficient
    )
    return np.asarray(rate, float), np.asarray(sliding, float)


# --------------------------------------------------------------------------------------------
# Nodal SIA: the velocity of a Geometry.
# --------------------------------------------------------------------------------------------


def sia_velocity(
    geometry: Geometry,
    *,
    physics: Physics = DEFAULT_PHYSICS,
    zeta: Optional[np.ndarray] = None,
) -> Velocity:
    r"""SIA velocity at the nodes of ``geometry`` (m/yr).

    Args:
        geometry: thickness, surface (or explicit ``surface_slope``), optional rate-factor and
            sliding-coefficient fields (they override ``physics``).
        physics: constants (A, n, rho g, sliding law).
        zeta: optional levels in [0, 1] (0 = bed); when given, the 3-D profile
            :math:`\mathbf u(\zeta) = \mathbf u_b + \mathbf u_{s,d}\,[1 - (1-\zeta)^{n+1}]` is
            returned on them as well.

    Returns:
        A :class:`~glacier_emulator.fields.Velocity` with the analytic depth average, surface
        and basal velocity (and the levels if ``zeta`` is given). Zero where ``H = 0``.

    Example:
        >>> bed = -np.arange(4.0) * np.ones((3, 1))  # surface slope 1 % down in x
        >>> g = Geometry(thickness=np.full((3, 4), 100.0), bed=bed, dx=100.0)
        >>> v = sia_velocity(g, physics=DEFAULT_PHYSICS.replace(no_slip=True))
        >>> bool(np.all(v.ubar > 0))
        True
    """
    rate, sliding = _parameters(geometry, physics)
    sx, sy = geometry.slopes()
    n = physics.glen_exponent
    ud, vd, ub, vb = sia_components(
        thickness=geometry.thickness, surface_slope_x=sx, surface_slope_y=sy,
        rate_factor=rate, sliding_coefficient=sliding, physics=physics,
    )
    surface_factor = (n + 2.0) / (n + 1.0)
    us_def, vs_def = surface_factor * ud, surface_factor * vd
    ubar, vbar = ud + ub, vd + vb
    if zeta is None:
        return Velocity(
            ubar=ubar, vbar=vbar, u_surface_=us_def + ub, v_surface_=vs_def + vb,
            u_base_=ub, v_base_=vb,
        )
    zeta = np.asarray(zeta, float)
    if zeta.ndim != 1 or np.any(zeta < 0) or np.any(zeta > 1):
        raise ValueError(f"zeta must be a 1-D array of levels in [0, 1]. Received: {zeta!r}")
    shape_fn = (1.0 - (1.0 - zeta) ** (n + 1.0))[:, None, None]
    u = ub[None] + us_def[None] * shape_fn
    v = vb[None] + vs_def[None] * shape_fn
    return Velocity(ubar=ubar, vbar=vbar, u=u, v=v, zeta=zeta)


def sia_shaped_levels(
    geometry: Geometry,
    ubar: np.ndarray,
    vbar: np.ndarray,
    *,
    zeta: np.ndarray,
    physics: Physics = DEFAULT_PHYSICS,
) -> Velocity:
    r"""A 3-D velocity with the depth average ``(ubar, vbar)`` and the SIA's vertical profile.

    Each column's speed is ``|ubar| * |u_sia(zeta)| / |ubar_sia|`` along the direction of
    ``(ubar, vbar)``: the shallow-ice shape (sliding plus :math:`1 - (1-\zeta)^{n+1}`), scaled so
    that the depth average (trapezoidal on ``zeta``, as :meth:`Velocity.from_levels` takes it)
    is exactly the given one. Where the SIA
    speed vanishes the column is uniform. A starting guess for the reference solver when only the
    depth average is known (a 2-channel emulator, :meth:`Emulator.predict_geometry` with
    ``refine``).
    """
    sia = sia_velocity(geometry, physics=physics, zeta=zeta)
    zeta = np.asarray(zeta, float)
    column = np.hypot(sia.u, sia.v)
    mean = np.tensordot(trapezoid_weights(zeta), column, axes=1)
    tiny = 1e-6 * max(float(mean.max()), 1e-30)
    shape = np.where(mean > tiny, column / np.maximum(mean, tiny), 1.0)
    return Velocity.from_levels(np.asarray(ubar)[None] * shape, np.asarray(vbar)[None] * shape, zeta)


def sia_diffusivity(geometry: Geometry, *, physics: Physics = DEFAULT_PHYSICS) -> np.ndarray:
    r"""Nodal SIA diffusivity :math:`D` (m^2/yr) with :math:`H\bar{\mathbf u} = -D\nabla s`.

    .. math::

        D = \Gamma H^{n+2} |\nabla s|^{n-1} + H \Bigl(\frac{\rho g H}{c}\Bigr)^{1/m}
            |\nabla s|^{1/m-1}
    """
    rate, sliding = _parameters(geometry, physics)
    sx, sy = geometry.slopes()
    return _diffusivity(geometry.thickness, np.hypot(sx, sy), rate, sliding, physics)


def _diffusivity(h, slope, rate, sliding, physics: Physics):
    n = physics.glen_exponent
    h = np.maximum(np.asarray(h, float), 0.0)
    gamma = deformation_factor(rate_factor=rate, physics=physics)
    d = gamma * h ** (n + 2.0) * slope ** (n - 1.0)
    d = d + h * _basal_speed_per_slope(
        thickness=h, slope=slope, sliding_coefficient=sliding, physics=physics
    )
    return d


def sia_stable_time_step(
    geometry: Geometry, *, physics: Physics = DEFAULT_PHYSICS, safety: float = 0.8
) -> float:
    r"""Explicit stability bound of the SIA thickness update (yr).

    .. math:: \Delta t = \text{safety} \cdot \frac{\min(\Delta x, \Delta y)^2}{4 \max D}

    with :math:`D` taken on the cell faces, where the time stepper evaluates the flux, using the
    larger of the two neighbouring thicknesses in :math:`H^{n+2}` (an upper bound of the
    effective diffusivity of the upwinded flux). ``inf`` where nothing moves.
    """
    if not safety > 0:
        raise ValueError(f"safety must be > 0. Received: safety={safety!r}")
    rate, sliding = _parameters(geometry, physics)
    dmax = 0.0
    for face in _faces(geometry, rate, sliding):
        h_mean, h_max, sx, sy, a, c = face
        n = physics.glen_exponent
        slope = np.hypot(sx, sy)
        gamma = deformation_factor(rate_factor=a, physics=physics)
        d = gamma * h_mean ** (n + 1.0) * h_max * slope ** (n - 1.0)
        d = d + h_max * _basal_speed_per_slope(
            thickness=h_mean, slope=slope, sliding_coefficient=c, physics=physics
        )
        if d.size:
            dmax = max(dmax, float(np.max(d)))
    if dmax <= 0:
        return float("inf")
    return float(safety * min(geometry.dx, geometry.dy) ** 2 / (4.0 * dmax))


# --------------------------------------------------------------------------------------------
# Face-centred (staggered) SIA for the time stepper.
# --------------------------------------------------------------------------------------------


def _face_average(field, axis: int, periodic: bool):
    """Average of neighbouring nodes along ``axis``: interior faces (+ the wrap face if periodic)."""
    field = np.asarray(field, float)
    if field.ndim == 0:
        return field
    if periodic:
        return 0.5 * (field + np.roll(field, -1, axis=axis))
    lo = [slice(None)] * field.ndim
    hi = [slice(None)] * field.ndim
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    return 0.5 * (field[tuple(lo)] + field[tuple(hi)])


def _face_max(field, axis: int, periodic: bool):
    field = np.asarray(field, float)
    if periodic:
        return np.maximum(field, np.roll(field, -1, axis=axis))
    lo = [slice(None)] * field.ndim
    hi = [slice(None)] * field.ndim
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    return np.maximum(field[tuple(lo)], field[tuple(hi)])


def _face_difference(field, axis: int, spacing: float, periodic: bool):
    if periodic:
        return (np.roll(field, -1, axis=axis) - field) / spacing
    return np.diff(field, axis=axis) / spacing


def _faces(geometry: Geometry, rate, sliding):
    """Face quantities (H mean, H max, s_x, s_y, A, c) on the x faces and on the y faces.

    x faces lie between nodes (j, i) and (j, i+1): ``(ny, nx-1)``, or ``(ny, nx)`` when periodic
    (the last one wraps from nx-1 to 0); y faces likewise along y.
    """
    h = geometry.thickness
    s = geometry.surface
    per = geometry.periodic
    gx, gy = geometry.slopes()
    if geometry.surface_slope is not None:
        # A non-periodic surface with an explicit slope (ISMIP-HOM): average the nodal slopes.
        sx_x, sy_x = _face_average(gx, 1, per), _face_average(gy, 1, per)
        sx_y, sy_y = _face_average(gx, 0, per), _face_average(gy, 0, per)
    else:
        sx_x = _face_difference(s, 1, geometry.dx, per)
        sy_x = _face_average(gy, 1, per)
        sx_y = _face_average(gx, 0, per)
        sy_y = _face_difference(s, 0, geometry.dy, per)
    x_faces = (
        _face_average(h, 1, per), _face_max(h, 1, per), sx_x, sy_x,
        _face_average(rate, 1, per), _face_average(sliding, 1, per),
    )
    y_faces = (
        _face_average(h, 0, per), _face_max(h, 0, per), sx_y, sy_y,
        _face_average(rate, 0, per), _face_average(sliding, 0, per),
    )
    return x_faces, y_faces


def sia_face_velocities(
    geometry: Geometry,
    *,
    physics: Physics = DEFAULT_PHYSICS,
    nodal: Optional[Velocity] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    r"""Depth-averaged SIA velocity normal to each cell face (m/yr), Mahaffy-type staggering.

    On the face between nodes :math:`i` and :math:`i+1` (x direction)

    .. math::

        \bar u_{i+1/2} = -\bigl(\Gamma H_{i+1/2}^{n+1} |\nabla s|^{n-1}
             + u_b/|\nabla s|\bigr)\, \frac{s_{i+1} - s_i}{\Delta x},
        \qquad H_{i+1/2} = \tfrac12 (H_i + H_{i+1}),

    with :math:`|\nabla s|` from the normal difference and the average of the two nodes' central
    y differences. The ice flux through the face is this velocity times the (upwinded) face
    thickness, computed by the time stepper.

    Args:
        geometry: the glacier.
        physics: constants.
        nodal: the nodal SIA velocity, used on the domain edges (computed when not given).

    Returns:
        ``(u_faces, v_faces)`` in the time stepper's layout: ``u_faces`` is ``(ny, nx+1)``, column
        ``k`` the face between cells ``k-1`` and ``k`` (column 0 the west edge of the domain,
        column ``nx`` the east edge); ``v_faces`` is ``(ny+1, nx)`` likewise along y. On a finite
        domain the edge faces carry the velocity of the edge node; on a periodic one the first and
        last columns are the same wrap-around face.
    """
    rate, sliding = _parameters(geometry, physics)
    x_faces, y_faces = _faces(geometry, rate, sliding)
    velocities = []
    for axis, (h_mean, _, sx, sy, a, c) in zip((1, 0), (x_faces, y_faces)):
        ud, vd, ub, vb = sia_components(
            thickness=h_mean, surface_slope_x=sx, surface_slope_y=sy,
            rate_factor=a, sliding_coefficient=c, physics=physics,
        )
        velocities.append(ud + ub if axis == 1 else vd + vb)
    u_int, v_int = velocities
    ny, nx = geometry.shape
    u_faces = np.zeros((ny, nx + 1))
    v_faces = np.zeros((ny + 1, nx))
    if geometry.periodic:
        u_faces[:, 1:] = u_int
        u_faces[:, 0] = u_int[:, -1]
        v_faces[1:, :] = v_int
        v_faces[0, :] = v_int[-1, :]
        return u_faces, v_faces
    if nodal is None:
        nodal = sia_velocity(geometry, physics=physics)
    u_faces[:, 1:-1] = u_int
    u_faces[:, 0] = nodal.ubar[:, 0]
    u_faces[:, -1] = nodal.ubar[:, -1]
    v_faces[1:-1, :] = v_int
    v_faces[0, :] = nodal.vbar[0, :]
    v_faces[-1, :] = nodal.vbar[-1, :]
    return u_faces, v_faces
