r"""Halfar's (1983) similarity solution: a shallow-ice dome spreading on a flat bed.

This is test B of Bueler et al. (2005, J. Glaciol. 51(173), 291-306): no sliding, no surface mass
balance, a flat bed at 0 m, and Glen's law with exponent :math:`n`. The thickness is

.. math::

    H(r, t) = H_0 \Bigl(\frac{t_0}{t}\Bigr)^{\alpha}
        \Bigl[1 - \Bigl(\Bigl(\frac{t_0}{t}\Bigr)^{\beta} \frac{r}{R_0}\Bigr)^{(n+1)/n}
        \Bigr]_+^{n/(2n+1)},
    \qquad \alpha = \frac{2}{5n+3}, \quad \beta = \frac{1}{5n+3},

with the dome height :math:`H_0` and margin radius :math:`R_0` at the reference time

.. math::

    t_0 = \frac{\beta}{\Gamma} \Bigl(\frac{2n+1}{n+1}\Bigr)^n \frac{R_0^{n+1}}{H_0^{2n+1}},
    \qquad \Gamma = \frac{2A(\rho g)^n}{n+2}.

(For :math:`n = 3`: :math:`\alpha = 1/9`, :math:`\beta = 1/18`.) The volume is constant in time;
the margin advances as :math:`R_0 (t/t_0)^\beta`. Times are absolute Halfar times (yr),
:math:`t \ge t_0 > 0` for a run started from :math:`H(r, t_0)`.

Units: m, yr, MPa (A in MPa^-n yr^-1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..constants import DEFAULT_PHYSICS, Physics
from ..fields import Geometry

__all__ = ["HalfarDome"]


@dataclass(frozen=True)
class HalfarDome:
    """Halfar's dome with height ``height`` (m) and radius ``radius`` (m) at its time ``t0``.

    Args:
        height: H_0, the dome height at ``t0`` (m).
        radius: R_0, the margin radius at ``t0`` (m).
        physics: A, n, rho g (sliding is switched off: :attr:`physics_no_slip`).

    Example:
        >>> dome = HalfarDome(height=500.0, radius=10_000.0)
        >>> round(float(dome.thickness(0.0, dome.t0)), 6)
        500.0
    """

    height: float = 500.0
    radius: float = 10_000.0
    physics: Physics = DEFAULT_PHYSICS

    def __post_init__(self):
        for name in ("height", "radius"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 m. Received: {name}={value!r}")

    @property
    def physics_no_slip(self) -> Physics:
        """The constants with sliding off: the physics of test B."""
        return self.physics.replace(no_slip=True)

    @property
    def n(self) -> float:
        return self.physics.glen_exponent

    @property
    def alpha(self) -> float:
        return 2.0 / (5.0 * self.n + 3.0)

    @property
    def beta(self) -> float:
        return 1.0 / (5.0 * self.n + 3.0)

    @property
    def t0(self) -> float:
        """The reference time t_0 (yr) at which the dome has height H_0 and radius R_0."""
        n = self.n
        gamma = 2.0 * self.physics.rate_factor * self.physics.rho_g**n / (n + 2.0)
        return (
            self.beta / gamma * ((2 * n + 1) / (n + 1)) ** n
            * self.radius ** (n + 1) / self.height ** (2 * n + 1)
        )

    def thickness(self, r, t: float) -> np.ndarray:
        """Exact thickness H(r, t) (m) at distance ``r`` (m) from the centre, time ``t`` (yr)."""
        if not t > 0:
            raise ValueError(f"Halfar time t must be > 0 yr. Received: t={t!r}")
        n = self.n
        ratio = self.t0 / float(t)
        r = np.abs(np.asarray(r, float))
        inner = 1.0 - (ratio**self.beta * r / self.radius) ** ((n + 1.0) / n)
        return self.height * ratio**self.alpha * np.maximum(inner, 0.0) ** (n / (2.0 * n + 1.0))

    def margin(self, t: float) -> float:
        """Margin radius R(t) = R_0 (t/t_0)^beta (m)."""
        return self.radius * (float(t) / self.t0) ** self.beta

    def volume(self) -> float:
        r"""Exact ice volume (m^3), constant in time:
        :math:`V = 2\pi H_0 R_0^2 \int_0^1 (1 - x^{(n+1)/n})^{n/(2n+1)} x\,dx`."""
        from scipy.integrate import quad

        n = self.n
        integral, _ = quad(lambda x: (1.0 - x ** ((n + 1) / n)) ** (n / (2 * n + 1)) * x, 0.0, 1.0)
        return 2.0 * math.pi * self.height * self.radius**2 * integral

    def geometry(
        self, *, cells: int = 41, half_width: Optional[float] = None, t: Optional[float] = None
    ) -> Geometry:
        """The dome on a ``cells x cells`` grid centred on the dome (flat bed at 0 m).

        Args:
            cells: nodes per side (odd puts a node on the centre).
            half_width: half the domain size (m), default 1.5 R_0; must exceed the margin.
            t: the time (yr), default ``t0``.
        """
        if int(cells) != cells or cells < 3:
            raise ValueError(f"cells must be an integer >= 3. Received: cells={cells!r}")
        half = 1.5 * self.radius if half_width is None else float(half_width)
        t = self.t0 if t is None else float(t)
        if not half > self.margin(t):
            raise ValueError(
                f"half_width must exceed the margin radius {self.margin(t):.1f} m. Received: {half!r}"
            )
        x = np.linspace(-half, half, int(cells))
        dx = float(x[1] - x[0])
        X, Y = np.meshgrid(x, x)
        thickness = self.thickness(np.hypot(X, Y), t)
        return Geometry(
            thickness=thickness, bed=np.zeros_like(thickness), dx=dx, x=x, y=x.copy(),
            attrs={"title": "Halfar dome (Bueler et al. 2005, test B)"},
        )

    def radii(self, geometry: Geometry) -> np.ndarray:
        """Distance of each node of ``geometry`` from the dome centre (m)."""
        X, Y = np.meshgrid(geometry.x, geometry.y)
        return np.hypot(X, Y)
