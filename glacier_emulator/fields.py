"""The two objects every component exchanges: a :class:`Geometry` in, a :class:`Velocity` out.

The reference solver, the emulator, the shallow-ice approximation, the time stepper and the
training code all meet at this interface: a velocity provider takes a ``Geometry`` and returns a
``Velocity``. Arrays are numpy, ``(ny, nx)`` with y ascending; units are those of
:mod:`glacier_emulator.constants` (m, yr, MPa).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import numpy as np

from .constants import trapezoid_weights
from .numerics.grid import node_gradient

ArrayOrScalar = Union[float, np.ndarray]


class InputError(ValueError):
    """Bad input, with a message meant for people (names the file and the variable)."""


@dataclass(frozen=True)
class Geometry:
    """Gridded glacier geometry on a regular grid.

    Args:
        thickness: ice thickness H (m), ``(ny, nx)``, >= 0.
        bed: bed elevation b (m); the surface is ``bed + thickness``.
        dx, dy: grid spacing (m), > 0 (``dy`` defaults to ``dx``).
        x, y: coordinates of the nodes (m); default ``arange * spacing``.
        sliding_coefficient: c in MPa (m/yr)^-m, scalar or ``(ny, nx)``; None = the physics default.
        rate_factor: A in MPa^-n yr^-1, scalar or ``(ny, nx)``; None = the physics default.
        smb: surface mass balance (m ice/yr), ``(ny, nx)``, optional.
        periodic: periodic boundaries (ISMIP-HOM); otherwise a finite domain.
        surface_slope: explicit ``(s_x, s_y)`` used instead of the gradient of the surface
            where the surface itself is not periodic (ISMIP-HOM).
        attrs: metadata carried to output files (projection, grid mapping, source file).

    Example:
        >>> g = Geometry(thickness=np.full((4, 5), 100.0), bed=np.zeros((4, 5)), dx=50.0)
        >>> g.shape, float(g.surface.max())
        ((4, 5), 100.0)
    """

    thickness: np.ndarray
    bed: np.ndarray
    dx: float
    dy: Optional[float] = None
    x: Optional[np.ndarray] = None
    y: Optional[np.ndarray] = None
    sliding_coefficient: Optional[ArrayOrScalar] = None
    rate_factor: Optional[ArrayOrScalar] = None
    smb: Optional[np.ndarray] = None
    periodic: bool = False
    surface_slope: Optional[Tuple[np.ndarray, np.ndarray]] = None
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        thickness = np.asarray(self.thickness, dtype=np.float64)
        bed = np.asarray(self.bed, dtype=np.float64)
        if thickness.ndim != 2 or min(thickness.shape) < 2:
            raise InputError(
                f"thickness must be a 2-D (ny, nx) grid with at least 2 x 2 nodes; got shape "
                f"{thickness.shape}"
            )
        if bed.shape != thickness.shape:
            raise InputError(f"bed has shape {bed.shape} but thickness has {thickness.shape}")
        if not np.all(np.isfinite(thickness)):
            raise InputError("thickness contains NaN or infinite values")
        if not np.all(np.isfinite(bed)):
            raise InputError("bed contains NaN or infinite values")
        if np.any(thickness < 0):
            raise InputError(f"thickness is negative (minimum {thickness.min():.4g} m)")
        dy = self.dx if self.dy is None else self.dy
        for name, value in (("dx", self.dx), ("dy", dy)):
            if not (np.isfinite(value) and value > 0):
                raise InputError(f"grid spacing {name} must be positive; got {value!r}")
        ny, nx = thickness.shape
        x = np.arange(nx) * float(self.dx) if self.x is None else np.asarray(self.x, float)
        y = np.arange(ny) * float(dy) if self.y is None else np.asarray(self.y, float)
        set_ = object.__setattr__
        set_(self, "thickness", thickness)
        set_(self, "bed", bed)
        set_(self, "dx", float(self.dx))
        set_(self, "dy", float(dy))
        set_(self, "x", x)
        set_(self, "y", y)
        for name in ("sliding_coefficient", "rate_factor"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim not in (0, 2) or (arr.ndim == 2 and arr.shape != thickness.shape):
                raise InputError(f"{name} has shape {arr.shape}; expected scalar or {thickness.shape}")
            if not np.all(np.isfinite(arr)):
                raise InputError(f"{name} contains NaN or infinite values")
            if name == "rate_factor" and np.any(arr <= 0):
                raise InputError("rate_factor must be positive")
            if name == "sliding_coefficient" and np.any(arr < 0):
                raise InputError("sliding_coefficient must be >= 0")
            set_(self, name, float(arr) if arr.ndim == 0 else arr)
        if self.smb is not None:
            smb = np.asarray(self.smb, dtype=np.float64)
            if smb.shape != thickness.shape:
                raise InputError(f"smb has shape {smb.shape} but thickness has {thickness.shape}")
            if not np.all(np.isfinite(smb)):
                raise InputError("smb contains NaN or infinite values")
            set_(self, "smb", smb)

    @property
    def shape(self) -> Tuple[int, int]:
        return self.thickness.shape

    @property
    def surface(self) -> np.ndarray:
        return self.bed + self.thickness

    @property
    def ice_mask(self) -> np.ndarray:
        return self.thickness > 0

    @property
    def cell_area(self) -> float:
        return self.dx * self.dy

    def slopes(self) -> Tuple[np.ndarray, np.ndarray]:
        """Nodal surface slope (s_x, s_y): the explicit one if given, else central differences."""
        if self.surface_slope is not None:
            return tuple(np.asarray(s, float) for s in self.surface_slope)
        return node_gradient(self.surface, dx=self.dx, dy=self.dy, periodic=self.periodic)

    def replace(self, **changes) -> "Geometry":
        return dataclasses.replace(self, **changes)

    def with_thickness(self, thickness: np.ndarray) -> "Geometry":
        """The same glacier with a new thickness (bed fixed); used by the time stepper."""
        return dataclasses.replace(self, thickness=thickness)

    @classmethod
    def from_surface(cls, *, thickness, surface, dx, **kwargs) -> "Geometry":
        """Build from thickness and surface elevation (bed = surface - thickness)."""
        thickness = np.asarray(thickness, float)
        return cls(thickness=thickness, bed=np.asarray(surface, float) - thickness, dx=dx, **kwargs)


@dataclass(frozen=True)
class Velocity:
    """Ice velocity (m/yr) on the grid.

    ``ubar``, ``vbar`` are the depth averages ``(ny, nx)``; ``u``, ``v`` the 3-D fields on the
    ``Nz`` terrain-following levels ``zeta`` (0 = bed, 1 = surface), ``(Nz, ny, nx)``, or None
    when only the depth average is known (a 2-channel emulator, the SIA without levels).
    """

    ubar: np.ndarray
    vbar: np.ndarray
    u: Optional[np.ndarray] = None
    v: Optional[np.ndarray] = None
    zeta: Optional[np.ndarray] = None
    u_surface_: Optional[np.ndarray] = None
    v_surface_: Optional[np.ndarray] = None
    u_base_: Optional[np.ndarray] = None
    v_base_: Optional[np.ndarray] = None

    @classmethod
    def from_levels(cls, u: np.ndarray, v: np.ndarray, zeta: np.ndarray) -> "Velocity":
        """Depth averages by the trapezoidal rule on the levels."""
        zeta = np.asarray(zeta, float)
        w = trapezoid_weights(zeta)
        u = np.asarray(u)
        v = np.asarray(v)
        ubar = np.tensordot(w, u, axes=(0, 0))
        vbar = np.tensordot(w, v, axes=(0, 0))
        return cls(ubar=ubar, vbar=vbar, u=u, v=v, zeta=zeta)

    @property
    def speed(self) -> np.ndarray:
        """Depth-averaged speed |ubar| (m/yr)."""
        return np.hypot(self.ubar, self.vbar)

    @property
    def u_surface(self):
        return self.u[-1] if self.u is not None else self.u_surface_

    @property
    def v_surface(self):
        return self.v[-1] if self.v is not None else self.v_surface_

    @property
    def u_base(self):
        return self.u[0] if self.u is not None else self.u_base_

    @property
    def v_base(self):
        return self.v[0] if self.v is not None else self.v_base_

    @property
    def has_levels(self) -> bool:
        return self.u is not None


def relative_l2(estimate: np.ndarray, reference: np.ndarray, mask: Optional[np.ndarray] = None):
    """Relative L2 error ||estimate - reference|| / ||reference|| over ``mask`` (all by default)."""
    estimate = np.asarray(estimate, float)
    reference = np.asarray(reference, float)
    if mask is not None:
        estimate, reference = estimate[..., mask], reference[..., mask]
    denom = np.sqrt(np.sum(reference**2))
    if denom == 0:
        return float(np.sqrt(np.sum(estimate**2)))
    return float(np.sqrt(np.sum((estimate - reference) ** 2)) / denom)
